"""The Data tab: load a corpus (bundled, uploaded files, or a Hugging Face dataset), pick the text column,
choose cleaning options with a live before/after preview, and prepare token files for training.

Everything is a call into `gpt.data`: `load_documents` / `load_hf_dataset`, `clean_documents` on a
sample for the preview, `prepare_dataset` for the real work. Prepared datasets are folders under the
app's data folder (`data/<name>/` with `meta.json`), so they survive restarts and the Train tab lists them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import gradio as gr

from gpt.data import (
    REPLACE_MODES,
    SUPPORTED_SUFFIXES,
    CleanConfig,
    LoadedSource,
    clean_documents,
    load_documents,
    load_hf_dataset,
    prepare_dataset,
    read_meta,
    split_token_counts,
)
from gpt.inspection import most_frequent_tokens
from gpt.tokenizer import gpt2_tokenizer
from gpt.ui.common import BUNDLED_CORPUS, BUNDLED_DATASET_NAME, AppDirs, error_text, safe_name

SOURCES = ["Tiny Shakespeare (bundled)", "Upload files", "Hugging Face dataset"]
PREVIEW_DOCS = 200
PREVIEW_CHARS = 20_000
TOP_TOKENS = 15
# Labels of the cleaning options (every field of `CleanConfig` gets a control; unlisted ones use their name).
CLEAN_LABELS = {
    "fix_unicode": "Fix broken Unicode (mojibake)",
    "strip_html": "Strip HTML tags",
    "urls": "URLs",
    "emails": "E-mail addresses",
    "phone_numbers": "Phone numbers",
    "numbers": "Numbers",
    "remove_line_breaks": "Remove line breaks (loses verse and dialogue structure)",
    "collapse_whitespace": "Collapse repeated spaces and blank lines",
    "lowercase": "Lower-case everything",
    "to_ascii": "Convert to ASCII (destroys non-Latin text and emoji)",
    "min_chars": "Drop documents shorter than (characters)",
    "deduplicate": "Drop exact duplicate documents",
    "remove_patterns": "Remove regex matches (one pattern per line)",
}


def prepared_datasets(dirs: AppDirs) -> list[str]:
    """Names of the prepared datasets in the app's data folder (folders holding a meta.json)."""
    return sorted(path.parent.name for path in dirs.data.glob("*/meta.json"))


def ensure_bundled_dataset(dirs: AppDirs) -> Path:
    """The bundled Tiny Shakespeare, prepared with the default cleaning on first use."""
    out = dirs.data / BUNDLED_DATASET_NAME
    if not (out / "meta.json").is_file():
        prepare_dataset([BUNDLED_CORPUS], out, clean_config=CleanConfig(), val_fraction=0.1)
    return out


def _clean_config(values: dict) -> CleanConfig:
    values = dict(values)
    values["remove_patterns"] = tuple(line for line in (values.get("remove_patterns") or "").splitlines() if line)
    values["min_chars"] = int(values.get("min_chars") or 0)
    return CleanConfig(**values)


def _load(kind: str, files, split_blank: bool, hf_name: str, hf_config: str, hf_split: str,
          column: str | None) -> LoadedSource:
    if kind == SOURCES[0]:
        return load_documents([BUNDLED_CORPUS], split_on_blank_lines=split_blank)
    if kind == SOURCES[1]:
        paths = [Path(f) for f in (files or [])]
        if not paths:
            raise gr.Error("Upload at least one file first (" + ", ".join(sorted(SUPPORTED_SUFFIXES)) + ").")
        return load_documents(paths, column=column or None, split_on_blank_lines=split_blank)
    return load_hf_dataset((hf_name or "").strip(), (hf_config or "").strip() or None,
                           (hf_split or "").strip() or "train", column=column or None)


def _default_name(kind: str, loaded: LoadedSource, files, hf_name: str) -> str:
    if kind == SOURCES[0]:
        return BUNDLED_DATASET_NAME
    if kind == SOURCES[1] and files:
        return safe_name(Path(files[0]).stem, default="dataset")
    return safe_name((hf_name or "dataset").split("/")[-1], default="dataset")


def _loaded_markdown(loaded: LoadedSource) -> str:
    chars = sum(len(doc) for doc in loaded.documents)
    lines = [f"**Loaded {loaded.source}:** {len(loaded.documents):,} documents, {chars:,} characters"
             + (f", text column `{loaded.chosen_column}`" if loaded.chosen_column else "")]
    lines += [f"- note: {note}" for note in loaded.notes]
    return "\n".join(lines)


def load_source(kind, files, split_blank, hf_name, hf_config, hf_split, column=None):
    """Load the chosen source; returns (state, summary, column picker, preview table, dataset name)."""
    try:
        loaded = _load(kind, files, split_blank, hf_name, hf_config, hf_split, column)
    except gr.Error:
        raise
    except Exception as error:  # the library's UserInputError, or an unreadable file: show, keep serving
        raise gr.Error(error_text(error)) from error
    column_update = gr.update(choices=loaded.columns or [], value=loaded.chosen_column,
                              visible=bool(loaded.columns))
    return (loaded, _loaded_markdown(loaded), column_update, loaded.preview,
            _default_name(kind, loaded, files, hf_name))


def _non_ascii(documents) -> int:
    return sum(1 for doc in documents for char in doc if ord(char) > 127)


def _stats_table(before: dict, after: dict) -> str:
    rows = ["| | before | after |", "|---|---:|---:|"]
    for key in ("documents", "characters", "words", "tokens"):
        if key in before or key in after:
            rows.append(f"| {key} | {before.get(key, 0):,} | {after.get(key, 0):,} |")
    return "\n".join(rows)


def clean_preview(loaded: LoadedSource | None, *option_values) -> str:
    """Markdown: what the cleaning options do to a sample of the loaded documents."""
    if loaded is None:
        return "Load a source to see what cleaning does to it."
    names = [f.name for f in dataclasses.fields(CleanConfig)]
    try:
        config = _clean_config(dict(zip(names, option_values, strict=True)))
    except Exception as error:  # e.g. an invalid regular expression: say which
        return f"⚠️ **{error_text(error)}**"
    sample = [doc[:PREVIEW_CHARS] for doc in loaded.documents[:PREVIEW_DOCS]]
    report = clean_documents(sample, config)
    parts = [f"**Preview on a sample** ({len(sample)} documents, up to {PREVIEW_CHARS:,} characters each)",
             "", _stats_table(report.before, report.after), ""]
    lost = _non_ascii(sample) - _non_ascii(report.documents)
    if _non_ascii(sample) and lost > 0 and (config.to_ascii or lost > 0.5 * _non_ascii(sample)):
        parts.append(f"⚠️ **These options remove {lost:,} of the {_non_ascii(sample):,} non-ASCII characters "
                     "in the sample (accents, non-Latin scripts, emoji).** Turn off *to ASCII* to keep them.")
    parts += [f"- note: {note}" for note in report.notes]
    changed = {rule: count for rule, count in report.documents_by_rule.items() if count}
    if changed:
        parts.append("**Per rule** (documents changed / characters removed):")
        parts += [f"- {rule}: {count:,} / {report.removed_by_rule.get(rule, 0):,}" for rule, count in changed.items()]
    else:
        parts.append("These options change nothing in the sample.")
    for before, after in report.examples[:2]:
        parts += ["", "Before:", f"```\n{before}\n```", "After:", f"```\n{after}\n```"]
    return "\n".join(parts)


def _most_frequent_tokens(data_dir: Path) -> str:
    counts = split_token_counts(data_dir, "train")
    tokenizer = gpt2_tokenizer()
    top = most_frequent_tokens(counts, tokenizer, TOP_TOKENS)
    return " ".join(f"`{tokenizer.token_display(t)}` {counts[t] / counts.sum():.1%}" for t in top)


def dataset_markdown(data_dir: Path) -> str:
    """Statistics of a prepared dataset, from its meta.json and token files."""
    meta = read_meta(data_dir)
    after = meta.get("stats_after", {})
    words = after.get("words") or 0
    tokens = meta["train_tokens"] + meta["val_tokens"]
    lines = [
        f"### Dataset `{data_dir.name}`",
        f"Source: {meta.get('source')}" + (f" (column `{meta['column']}`)" if meta.get("column") else ""),
        "",
        "| | value |",
        "|---|---:|",
        f"| documents | {meta.get('documents', 0):,} |",
        f"| characters | {after.get('characters', 0):,} |",
        f"| tokens | {tokens:,} |",
        f"| train / val tokens | {meta['train_tokens']:,} / {meta['val_tokens']:,} |",
        f"| val {meta.get('ngram_n', 8)}-grams also in train | {meta.get('val_ngram_overlap', 0):.1%} |",
        f"| tokens per word | {tokens / words:.2f} |" if words else "| tokens per word | n/a |",
        "",
        f"Most frequent tokens (share of train): {_most_frequent_tokens(data_dir)}",
    ]
    if meta.get("val_ngram_overlap", 0) > 0.5:
        lines.append("\n⚠️ More than half of the validation 8-grams occur in train: validation loss will look "
                     "too good (duplicated text?).")
    return "\n".join(lines)


def build_data_tab(dirs: AppDirs) -> None:
    """The Data tab's components and events (called inside `gr.Tab("Data")`)."""
    loaded = gr.State(None)
    with gr.Row():
        with gr.Column(scale=1):
            kind = gr.Radio(SOURCES, value=SOURCES[0], label="Source", elem_id="data-source")
            files = gr.File(label="Files (" + ", ".join(sorted(SUPPORTED_SUFFIXES)) + ")", file_count="multiple",
                            file_types=sorted(SUPPORTED_SUFFIXES), type="filepath", visible=False,
                            elem_id="data-files")
            with gr.Group(visible=False) as hf_group:
                hf_name = gr.Textbox(label="Dataset name", placeholder="karpathy/tiny_shakespeare",
                                     elem_id="data-hf-name")
                with gr.Row():
                    hf_config = gr.Textbox(label="Config (optional)", elem_id="data-hf-config")
                    hf_split = gr.Textbox(value="train", label="Split", elem_id="data-hf-split")
            split_blank = gr.Checkbox(False, label="Text files: one document per blank-line-separated block",
                                      elem_id="data-split-blank")
            load = gr.Button("Load", variant="primary", elem_id="data-load")
        with gr.Column(scale=2):
            summary = gr.Markdown("Choose a source and press **Load**.", elem_id="data-summary")
            column = gr.Dropdown([], label="Text column", visible=False, allow_custom_value=True,
                                 elem_id="data-column")
            preview = gr.Dataframe(label="Preview", max_height=260, wrap=True, elem_id="data-preview")
    gr.Markdown("### Cleaning")
    with gr.Row():
        with gr.Column(scale=1):
            options = []
            for option in dataclasses.fields(CleanConfig):
                label = CLEAN_LABELS.get(option.name, option.name.replace("_", " "))
                elem_id = f"clean-{option.name.replace('_', '-')}"
                if option.type in ("bool", bool):
                    options.append(gr.Checkbox(option.default, label=label, elem_id=elem_id))
                elif option.type in ("int", int):
                    options.append(gr.Number(option.default, precision=0, minimum=0, label=label, elem_id=elem_id))
                elif option.name == "remove_patterns":
                    options.append(gr.Textbox("", lines=2, label=label, placeholder=r"\[\d+\]", elem_id=elem_id))
                else:
                    options.append(gr.Radio(list(REPLACE_MODES), value=option.default, label=label,
                                            elem_id=elem_id))
        with gr.Column(scale=2):
            cleaning = gr.Markdown("Load a source to see what cleaning does to it.", elem_id="data-clean-preview")
    gr.Markdown("### Prepare")
    with gr.Row():
        val_fraction = gr.Slider(0.01, 0.5, value=0.1, step=0.01, label="Validation fraction",
                                 elem_id="data-val-fraction")
        name = gr.Textbox(value=BUNDLED_DATASET_NAME, label="Dataset name (folder under data/)", elem_id="data-name")
        overwrite = gr.Checkbox(False, label="Overwrite a dataset of that name", elem_id="data-overwrite")
    prepare = gr.Button("Prepare", variant="primary", elem_id="data-prepare")
    with gr.Row():
        result = gr.Markdown(elem_id="data-result")
        with gr.Column():
            datasets = gr.Dropdown(prepared_datasets(dirs), value=None, label="Prepared datasets",
                                   allow_custom_value=True, elem_id="data-datasets")
            dataset_info = gr.Markdown(elem_id="data-dataset-info")

    def toggle(kind_value):
        return gr.update(visible=kind_value == SOURCES[1]), gr.update(visible=kind_value == SOURCES[2])

    def do_prepare(state, dataset_name, fraction, overwrite_value, *option_values,
                   progress=gr.Progress()):  # noqa: B008 (how Gradio asks for a progress bar)
        if state is None:
            raise gr.Error("Load a source first.")
        names = [f.name for f in dataclasses.fields(CleanConfig)]
        folder = safe_name(dataset_name, default="")
        if not folder:
            raise gr.Error("Give the dataset a name (letters, digits, '-', '_').")
        try:
            config = _clean_config(dict(zip(names, option_values, strict=True)))
            report = prepare_dataset(state, dirs.data / folder, clean_config=config, val_fraction=float(fraction),
                                     overwrite=bool(overwrite_value),
                                     progress=lambda fraction, message: progress(fraction, desc=message))
            text = dataset_markdown(report.out_dir)
        except Exception as error:
            raise gr.Error(error_text(error)) from error
        return text, gr.update(choices=prepared_datasets(dirs), value=folder)

    def show_dataset(dataset_name):
        if not dataset_name:
            return ""
        try:
            return dataset_markdown(dirs.data / safe_name(dataset_name))
        except Exception as error:
            raise gr.Error(error_text(error)) from error

    source_inputs = [kind, files, split_blank, hf_name, hf_config, hf_split]
    load_outputs = [loaded, summary, column, preview, name]
    kind.change(toggle, kind, [files, hf_group], api_visibility="private")
    load.click(load_source, source_inputs, load_outputs, api_name="load_source").then(
        clean_preview, [loaded, *options], cleaning, api_visibility="private")
    column.input(load_source, [*source_inputs, column], load_outputs, api_visibility="private").then(
        clean_preview, [loaded, *options], cleaning, api_visibility="private")
    gr.on([option.change for option in options], clean_preview, [loaded, *options], cleaning,
          api_name="preview_cleaning", trigger_mode="always_last")
    prepare.click(do_prepare, [loaded, name, val_fraction, overwrite, *options], [result, datasets],
                  api_name="prepare")
    datasets.input(show_dataset, datasets, dataset_info, api_name="dataset_info")
    datasets.focus(lambda: gr.update(choices=prepared_datasets(dirs)), None, datasets, api_visibility="private")
