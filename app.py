"""GPT Playground's web app: `python app.py` serves it (Hugging Face Spaces runs this file)."""

import gradio as gr


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="GPT Playground") as demo:
        gr.Markdown("# GPT Playground\nThe app is being built: Data, Train, Inspect and Generate tabs arrive next.")
    return demo


if __name__ == "__main__":
    build_demo().launch()
