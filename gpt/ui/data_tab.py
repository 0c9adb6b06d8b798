"""The Data tab: load a corpus (bundled, uploaded files, or a Hugging Face dataset), check its text encoding
and text column, choose cleaning options with a live before/after preview, and prepare token files.

`build` lays the tab out, the module-level handlers do the work (plain functions: tests call them without a
browser) and `wire` connects them. Everything is a call into `gpt.data`: `load_documents` /
`load_hf_dataset`, `clean_documents` on a sample for the preview, `prepare_dataset` for the real work. The
cleaning controls are made from `CleanConfig`'s field metadata, the same that makes the `prepare` flags.
Prepared datasets are folders under the app's data folder (`gpt.ui.datasets`), so they survive restarts
and the Train tab lists them.

Errors: every handler is wrapped in `handle_errors`; each event shows its progress (and so its error) only
on the output it is about, so a failed load does not put "Error" over the dataset name or the list of
datasets. Uploaded files are named by their own names (Gradio keeps an upload's name in its temporary
path), never by the server's folder.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from gpt.data import (
    AUTO_ENCODING,
    ENCODINGS,
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
from gpt.errors import UserInputError
from gpt.fields import FieldSpec, field_specs
from gpt.inspection import most_frequent_tokens
from gpt.tokenizer import gpt2_tokenizer
from gpt.ui.common import BUNDLED_CORPUS, BUNDLED_DATASET_NAME, AppDirs, error_text, handle_errors, safe_name
from gpt.ui.datasets import dataset_dir, prepared_datasets

SOURCES = ["Tiny Shakespeare (bundled)", "Upload files", "Hugging Face dataset"]
PREVIEW_DOCS = 200
PREVIEW_CHARS = 20_000
TOP_TOKENS = 15
PREVIEW_HEADERS = ["file", "characters", "text"]  # what a text file's preview shows; a table shows its columns
CLEAN_SPECS = field_specs(CleanConfig)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")  # "name" or "owner/name" on the Hub


@dataclass
class DataTab:
    """The tab's components, as `build` made them."""

    loaded: gr.State
    kind: gr.Radio
    files: gr.File
    hf_group: gr.Group
    hf_name: gr.Textbox
    hf_config: gr.Textbox
    hf_split: gr.Textbox
    encoding: gr.Dropdown
    split_blank: gr.Checkbox
    load: gr.Button
    summary: gr.Markdown
    column: gr.Dropdown
    preview: gr.Dataframe
    options: list[gr.components.Component]
    cleaning: gr.Markdown
    val_fraction: gr.Slider
    name: gr.Textbox
    overwrite: gr.Checkbox
    prepare: gr.Button
    result: gr.Markdown
    datasets: gr.Dropdown
    dataset_info: gr.Markdown


# -- handlers -----------------------------------------------------------------------------------------
def _clean_config(option_values) -> CleanConfig:
    """A CleanConfig from the cleaning controls' values, in `CLEAN_SPECS` order."""
    values = {}
    for spec, value in zip(CLEAN_SPECS, option_values, strict=True):
        if spec.kind is tuple:
            value = tuple(line for line in (value or "").splitlines() if line)
        elif spec.kind is int:
            value = spec.default if value is None else int(value)
        values[spec.name] = value
    return CleanConfig(**values)


def _load(kind: str, files, split_blank: bool, hf_name: str, hf_config: str, hf_split: str, encoding: str,
          column: str | None) -> LoadedSource:
    if kind == SOURCES[0]:
        return load_documents([BUNDLED_CORPUS], split_on_blank_lines=split_blank, encoding=encoding)
    if kind == SOURCES[1]:
        paths = [Path(f) for f in (files or [])]
        if not paths:
            raise UserInputError("Upload at least one file first (" + ", ".join(sorted(SUPPORTED_SUFFIXES)) + ").")
        return load_documents(paths, column=column or None, split_on_blank_lines=split_blank, encoding=encoding,
                              names=[path.name for path in paths])  # an upload's own name, not the temp folder
    name = (hf_name or "").strip()
    if name and (not HUB_ID.fullmatch(name) or ".." in name or Path(name).exists()):
        raise UserInputError(f"{name!r} is not a Hugging Face dataset name such as 'karpathy/tiny_shakespeare'; "
                             "to load your own files, choose Upload files")  # never a folder of the server
    return load_hf_dataset(name, (hf_config or "").strip() or None, (hf_split or "").strip() or "train",
                           column=column or None)


def _default_name(kind: str, files, hf_name: str) -> str:
    if kind == SOURCES[0]:
        return BUNDLED_DATASET_NAME
    if kind == SOURCES[1] and files:
        return safe_name(Path(files[0]).stem, default="dataset")
    return safe_name((hf_name or "dataset").split("/")[-1], default="dataset")


def _encoding_text(loaded: LoadedSource) -> str:
    """'encoding cp1252 (detected)', or one entry per file when they differ; '' for Parquet / datasets."""
    used = sorted(set(loaded.encodings.values()))
    if not used:
        return ""
    how = "detected" if loaded.encoding == AUTO_ENCODING else "as chosen"
    if len(used) == 1:
        return f"encoding **{used[0]}** ({how})"
    return f"encodings ({how}): " + ", ".join(f"{name} **{enc}**" for name, enc in loaded.encodings.items())


def _loaded_markdown(loaded: LoadedSource) -> str:
    chars = sum(len(doc) for doc in loaded.documents)
    details = [f"{len(loaded.documents):,} documents", f"{chars:,} characters"]
    if loaded.chosen_column:
        details.append(f"text column `{loaded.chosen_column}`")
    if _encoding_text(loaded):
        details.append(_encoding_text(loaded))
    lines = [f"**Loaded {loaded.source}:** " + ", ".join(details)]
    lines += [f"- note: {note}" for note in loaded.notes]
    if loaded.encoding == AUTO_ENCODING and set(loaded.encodings.values()) - {"utf-8", "utf-8-sig"}:
        lines.append("- Letters look wrong (č where è belongs, Ïðèâåò for Привет)? "
                     "Choose the file's **Text encoding**.")
    return "\n".join(lines)


@handle_errors
def load_source(kind, files, split_blank, hf_name, hf_config, hf_split, encoding=AUTO_ENCODING, column=None,
                progress=gr.Progress(track_tqdm=True)):  # noqa: B008 (how Gradio asks for a progress bar)
    """Load the chosen source; returns (state, summary, column picker, preview table, dataset name).

    `progress` follows `datasets`' download bars when a Hub dataset is fetched."""
    del progress  # Gradio tracks tqdm through it
    loaded = _load(kind, files, split_blank, hf_name, hf_config, hf_split, encoding or AUTO_ENCODING, column)
    column_update = gr.update(choices=loaded.columns or [], value=loaded.chosen_column,
                              visible=bool(loaded.columns))
    return loaded, _loaded_markdown(loaded), column_update, loaded.preview, _default_name(kind, files, hf_name)


@handle_errors
def reload_source(loaded, kind, files, split_blank, hf_name, hf_config, hf_split, encoding, column):
    """Load again with a new text encoding or column, once something has been loaded."""
    if loaded is None:
        return tuple(gr.skip() for _ in range(5))
    return load_source(kind, files, split_blank, hf_name, hf_config, hf_split, encoding, column)


def _non_ascii(documents) -> int:
    return sum(1 for doc in documents for char in doc if ord(char) > 127)


def _stats_table(before: dict, after: dict) -> str:
    rows = ["| | before | after |", "|---|---:|---:|"]
    for key in ("documents", "characters", "words", "tokens"):
        if key in before or key in after:
            rows.append(f"| {key} | {before.get(key, 0):,} | {after.get(key, 0):,} |")
    return "\n".join(rows)


@handle_errors
def clean_preview(loaded: LoadedSource | None, *option_values) -> str:
    """Markdown: what the cleaning options do to a sample of the loaded documents."""
    if loaded is None:
        return "Load a source to see what cleaning does to it."
    try:
        config = _clean_config(option_values)
    except UserInputError as error:  # e.g. an invalid regular expression: say which, next to the preview
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
    encodings = meta.get("encodings") or {}
    lines = [
        f"### Dataset `{data_dir.name}`",
        f"Source: {meta.get('source')}" + (f" (column `{meta['column']}`)" if meta.get("column") else "")
        + (f", read as {', '.join(sorted(set(encodings.values())))}" if encodings else ""),
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


@handle_errors
def prepare(dirs: AppDirs, loaded: LoadedSource | None, dataset_name: str, val_fraction: float, overwrite: bool,
            *option_values, progress=gr.Progress()):  # noqa: B008 (how Gradio asks for a progress bar)
    """Clean, split and tokenize the loaded source into `data/<name>/`; returns (statistics, datasets list)."""
    if loaded is None:
        raise UserInputError("Load a source first.")
    folder = safe_name(dataset_name, default="")
    if not folder:
        raise UserInputError("Give the dataset a name (letters, digits, '-', '_').")
    config = _clean_config(option_values)
    prepare_dataset(loaded, dirs.data / folder, clean_config=config, val_fraction=float(val_fraction),
                    overwrite=bool(overwrite), progress=lambda fraction, message: progress(fraction, desc=message))
    return dataset_markdown(dataset_dir(dirs, folder)), gr.update(choices=prepared_datasets(dirs), value=folder)


@handle_errors
def show_dataset(dirs: AppDirs, dataset_name: str | None) -> str:
    """Statistics of a prepared dataset chosen by name (only names the app lists)."""
    if not dataset_name:
        return ""
    return dataset_markdown(dataset_dir(dirs, dataset_name))


def refresh_datasets(dirs: AppDirs):
    return gr.update(choices=prepared_datasets(dirs))


def toggle_source(kind: str):
    """Show the file picker or the dataset-name fields for the chosen source."""
    return gr.update(visible=kind == SOURCES[1]), gr.update(visible=kind == SOURCES[2])


# -- layout -------------------------------------------------------------------------------------------
def _clean_control(spec: FieldSpec) -> gr.components.Component:
    """The control of one cleaning option, labelled and explained by its field metadata."""
    elem_id = f"clean-{spec.name.replace('_', '-')}"
    info = spec.help if spec.help.lower() != spec.label.lower() else None
    if spec.kind is bool:
        return gr.Checkbox(spec.default, label=spec.label, info=info, elem_id=elem_id)
    if spec.choices:
        return gr.Radio(list(spec.choices), value=spec.default, label=spec.label, info=info, elem_id=elem_id)
    if spec.kind is int:
        return gr.Number(spec.default, precision=0, minimum=spec.minimum, label=spec.label, info=info,
                         elem_id=elem_id)
    if spec.kind is tuple:
        return gr.Textbox("\n".join(spec.default), lines=2, label=spec.label, info=info, placeholder=r"\[\d+\]",
                          elem_id=elem_id)
    raise TypeError(f"no control for cleaning option {spec.name} of kind {spec.kind.__name__}")


def build(dirs: AppDirs) -> DataTab:
    """The tab's layout (inside `gr.Tab("Data")`); no events."""
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
            encoding = gr.Dropdown(list(ENCODINGS), value=AUTO_ENCODING, label="Text encoding",
                                   info="auto: UTF-8, else detected (cp1252 when unsure); any Python codec name",
                                   allow_custom_value=True, elem_id="data-encoding")
            split_blank = gr.Checkbox(False, label="Text files: one document per blank-line-separated block",
                                      elem_id="data-split-blank")
            load = gr.Button("Load", variant="primary", elem_id="data-load")
        with gr.Column(scale=2):
            summary = gr.Markdown("Choose a source and press **Load**.", elem_id="data-summary")
            column = gr.Dropdown([], label="Text column", visible=False, allow_custom_value=True,
                                 elem_id="data-column")
            preview = gr.Dataframe(headers=PREVIEW_HEADERS, label="Preview", max_height=260, wrap=True,
                                   interactive=False, elem_id="data-preview")
    gr.Markdown("### Cleaning")
    with gr.Row():
        with gr.Column(scale=1):
            options = [_clean_control(spec) for spec in CLEAN_SPECS]
        with gr.Column(scale=2):
            cleaning = gr.Markdown("Load a source to see what cleaning does to it.", elem_id="data-clean-preview")
    gr.Markdown("### Prepare")
    with gr.Row():
        val_fraction = gr.Slider(0.01, 0.5, value=0.1, step=0.01, label="Validation fraction",
                                 elem_id="data-val-fraction")
        name = gr.Textbox(value=BUNDLED_DATASET_NAME, label="Dataset name (folder under data/)", elem_id="data-name")
        overwrite = gr.Checkbox(False, label="Overwrite a dataset of that name", elem_id="data-overwrite")
    prepare_button = gr.Button("Prepare", variant="primary", elem_id="data-prepare")
    with gr.Row():
        result = gr.Markdown(elem_id="data-result")
        with gr.Column():
            datasets = gr.Dropdown(prepared_datasets(dirs), value=None, label="Prepared datasets",
                                   allow_custom_value=True, elem_id="data-datasets")  # checked by dataset_dir
            dataset_info = gr.Markdown(elem_id="data-dataset-info")
    return DataTab(loaded, kind, files, hf_group, hf_name, hf_config, hf_split, encoding, split_blank, load, summary,
                   column, preview, options, cleaning, val_fraction, name, overwrite, prepare_button, result, datasets,
                   dataset_info)


# -- events -------------------------------------------------------------------------------------------
def wire(dirs: AppDirs, tab: DataTab) -> None:
    """Connect the tab's events to the handlers. Each event shows progress and errors only on its own
    message (`show_progress_on`), never on the other outputs it fills."""
    source_inputs = [tab.kind, tab.files, tab.split_blank, tab.hf_name, tab.hf_config, tab.hf_split, tab.encoding]
    load_outputs = [tab.loaded, tab.summary, tab.column, tab.preview, tab.name]
    preview_inputs = [tab.loaded, *tab.options]
    tab.kind.change(toggle_source, tab.kind, [tab.files, tab.hf_group], api_visibility="private")
    tab.load.click(load_source, source_inputs, load_outputs, api_name="load_source",
                   show_progress_on=[tab.summary]).success(
        clean_preview, preview_inputs, tab.cleaning, api_visibility="private")
    gr.on([tab.column.input, tab.encoding.input], reload_source, [tab.loaded, *source_inputs, tab.column],
          load_outputs, api_visibility="private", show_progress_on=[tab.summary]).success(
        clean_preview, preview_inputs, tab.cleaning, api_visibility="private")
    gr.on([option.change for option in tab.options], clean_preview, preview_inputs, tab.cleaning,
          api_name="preview_cleaning", trigger_mode="always_last")
    tab.prepare.click(functools.partial(prepare, dirs), [tab.loaded, tab.name, tab.val_fraction, tab.overwrite,
                                                         *tab.options],
                      [tab.result, tab.datasets], api_name="prepare", show_progress_on=[tab.result])
    tab.datasets.input(functools.partial(show_dataset, dirs), tab.datasets, tab.dataset_info, api_name="dataset_info")
    tab.datasets.focus(functools.partial(refresh_datasets, dirs), None, tab.datasets, api_visibility="private")


def build_data_tab(dirs: AppDirs) -> DataTab:
    """The Data tab, laid out and wired (called inside `gr.Tab("Data")`)."""
    tab = build(dirs)
    wire(dirs, tab)
    return tab
