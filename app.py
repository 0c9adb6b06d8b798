"""GPT Playground's web app: `python app.py` serves it; Hugging Face Spaces runs this file as it is.

Honours GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (Gradio reads them when `launch` gets no explicit
values), caps upload size, and starts on a CPU with no network access. A person's input error is one
log line (`gpt.ui`); anything else is logged with its traceback.
"""

import logging

from gpt.ui.app import MAX_FILE_SIZE, build_demo

demo = build_demo()

if __name__ == "__main__":
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("gpt").addHandler(handler)
    logging.getLogger("gpt").setLevel(logging.INFO)
    demo.queue(default_concurrency_limit=2).launch(max_file_size=MAX_FILE_SIZE, ssr_mode=False)
