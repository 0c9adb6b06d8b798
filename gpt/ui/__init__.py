"""The web app (Gradio): one module per tab, wired to the library; `build_demo()` lives in `app.py`.

`zerogpu` is imported here, before any tab module imports torch, because Hugging Face's `spaces`
package must be imported before CUDA is initialised.
"""

from gpt.ui import zerogpu  # noqa: F401
