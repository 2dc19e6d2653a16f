"""The inference panel of notebook 4: load a checkpoint, classify images, show the top 5.

Pure parts: :func:`sample_images` (three shipped public-domain photographs),
:func:`uploaded_images` (the FileUpload widget's value -> images) and
:func:`plot_predictions` (images and their top-5 classes -> one matplotlib Figure)::

    from augreg_nb.widgets.inference_panel import InferencePanel, sample_images
    panel = InferencePanel("Ti_16-i21k-300ep-lr_0.001-aug_none-wd_0.03-do_0.0-sd_0.0"
                           "--imagenet2012-steps_20k-lr_0.03-res_384")
    panel                          # Load fetches the checkpoint (progress bar), Classify runs
    panel.load_button.click(); panel.classify_button.click()
    panel.predictions              # per image: [Prediction(index, name, prob), ...]

Classification is :func:`augreg_nb.inference.predict` (the protocol's evaluation
pre-processing); class names come with it: ImageNet names for 1000-class heads, a task's
names for the ``labels`` you give, none for ImageNet-21k upstream heads.

An upload that is no readable image is named in the message and left out; the others are
classified. Each upload has an entry in *Uploads*: unselect it to leave it out. What
TensorFlow, XLA and absl write to the process's stderr while the panel imports TensorFlow,
loads or classifies (oneDNN notices, absl's "InitializeLog" warning) is kept in a collapsed
*library messages* block (:class:`StderrCapture`) instead of red lines in the notebook.
"""

from __future__ import annotations

import io
import os
import re
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import ipywidgets as w
import numpy as np

from augreg_nb import preprocess
from augreg_nb.checkpoint import checkpoint_resolution, load_pretrained
from augreg_nb.inference import predict
from augreg_nb.names import parse_name
from augreg_nb.resources import data_path
from augreg_nb.sources import resolve_checkpoint
from augreg_nb.widgets.common import (
    FULL_WIDTH,
    MessageArea,
    attempt_reporter,
    details_html,
    guarded,
    run_in_output,
    show_figure,
)
from augreg_nb.widgets.index_browser import recommended_files

SAMPLE_SIZE = 224


#: The sample photographs shipped in ``data/samples`` (public domain / CC0, see
#: ``data/SOURCES.md``): label -> file.
SAMPLE_PHOTOS = {"cat": "cat.jpg", "coffee cup": "coffee.jpg", "rocket launch": "rocket.jpg"}


def sample_images(size: int | None = None) -> dict[str, np.ndarray]:
    """The shipped sample photographs as RGB uint8 arrays (a cat, a coffee cup, a rocket
    launch; scikit-image's public-domain test photos). ``size``: resize the shorter side
    to it (default: as shipped, about 300 x 448)."""
    from PIL import Image


    out = {}
    for label, name in SAMPLE_PHOTOS.items():
        with Image.open(data_path("samples", name)) as image:
            image = image.convert("RGB")
            if size is not None:
                scale = size / min(image.size)
                image = image.resize((max(1, round(image.width * scale)),
                                      max(1, round(image.height * scale))),
                                     Image.Resampling.BICUBIC)
            out[label] = np.asarray(image, dtype=np.uint8)
    return out


def upload_items(value: Sequence[Mapping[str, Any]] | Mapping[str, Any]
                 ) -> dict[str, bytes]:
    """``{file name: content}`` of a ``FileUpload`` value: ipywidgets 8's tuple of dicts
    with ``name`` and ``content``, or ipywidgets 7's ``{name: {"metadata", "content"}}``."""
    items = list(value.values()) if isinstance(value, Mapping) else list(value)
    out: dict[str, bytes] = {}
    for item in items:
        name = item.get("name") or item.get("metadata", {}).get("name", "upload")
        out[name] = bytes(item["content"])
    return out


def read_image(name: str, content: bytes):
    """``content`` as an RGB PIL image; ValueError naming ``name`` when Pillow cannot read
    it (never the in-memory buffer's repr)."""
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(content))
        image.load()
    except (UnidentifiedImageError, OSError, ValueError) as err:
        reason = re.sub(r"\s*<_io\.BytesIO object at 0x[0-9a-fA-F]+>", "", str(err)).strip()
        reason = reason or "unknown format"
        raise ValueError(f"{name} is not an image Pillow can read ({reason}); upload a "
                         "JPEG or PNG file") from None
    return image.convert("RGB")


def uploaded_images(value: Sequence[Mapping[str, Any]] | Mapping[str, Any], *,
                    errors: dict[str, str] | None = None) -> dict[str, Any]:
    """Images from a ``FileUpload`` value (see :func:`upload_items`), as RGB PIL images by
    file name. An unreadable file raises ValueError naming it, or, when ``errors`` is a
    dict, is left out with its reason put there."""
    out: dict[str, Any] = {}
    for name, content in upload_items(value).items():
        try:
            out[name] = read_image(name, content)
        except ValueError as err:
            if errors is None:
                raise
            errors[name] = str(err)
    return out


class _Fd2Redirect:
    """The process-wide redirection of file descriptor 2 into one temporary file, shared by
    every :class:`StderrCapture` entered at the time (the last to leave restores fd 2)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: int | None = None
        self.file: Any = None

    def enter(self) -> int | None:
        """Redirect (if not yet) and return the offset from which the caller's text starts;
        None where fd 2 cannot be redirected."""
        with self.lock:
            if self.depth == 0:
                try:
                    sys.stderr.flush()
                    # Appending: writes through fd 2 land at the end wherever a read seeks.
                    self.file = tempfile.TemporaryFile(mode="a+b", buffering=0)
                    self.saved = os.dup(2)
                    os.dup2(self.file.fileno(), 2)
                except (OSError, ValueError):  # no file descriptor 2 here
                    if self.file is not None:
                        self.file.close()
                    self.file = self.saved = None
                    return None
            self.depth += 1
            return os.fstat(self.file.fileno()).st_size

    def leave(self, start: int) -> str:
        """The text written since ``start``; restores fd 2 when the last user leaves."""
        with self.lock:
            size = os.fstat(self.file.fileno()).st_size
            self.file.seek(start)
            data = self.file.read(max(0, size - start))
            self.depth -= 1
            if self.depth == 0:
                os.dup2(self.saved, 2)
                os.close(self.saved)
                self.file.close()
                self.file = self.saved = None
        return data.decode("utf-8", "replace")


_FD2 = _Fd2Redirect()


class StderrCapture:
    """While entered, what anything in the process writes to file descriptor 2 (C++ code
    too: TensorFlow's oneDNN notice, absl's log lines) is kept: on leaving, its text is
    added to :attr:`text` instead of reaching the notebook. Entries from several threads or
    panels at once share one redirection (:class:`_Fd2Redirect`)."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self._starts: dict[int, list[int | None]] = {}

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def __enter__(self) -> StderrCapture:
        self._starts.setdefault(threading.get_ident(), []).append(_FD2.enter())
        return self

    def __exit__(self, *exc) -> None:
        start = self._starts[threading.get_ident()].pop()
        if start is not None:
            self.parts.append(_FD2.leave(start))


def plot_predictions(images: Mapping[str, Any], predictions: Sequence[Sequence[Any]]):
    """One row per image: the image and a bar chart of its top classes (name, probability)."""
    from matplotlib.figure import Figure

    n = len(images)
    if n != len(predictions):
        raise ValueError(f"{n} images but {len(predictions)} prediction lists")
    fig = Figure(figsize=(8, 2.1 * max(n, 1)), layout="constrained")
    axes = fig.subplots(max(n, 1), 2, squeeze=False, width_ratios=[1, 2.6])
    for (name, image), preds, (ax_img, ax_bar) in zip(images.items(), predictions, axes,
                                                      strict=True):
        ax_img.imshow(np.asarray(image))
        ax_img.set_title(name, fontsize=9)
        ax_img.axis("off")
        labels = [p.name if p.name is not None else f"class {p.index}" for p in preds]
        probs = [100 * p.prob for p in preds]
        ypos = np.arange(len(preds))
        ax_bar.barh(ypos, probs, color="tab:blue")
        ax_bar.set_yticks(ypos, [lbl[:38] for lbl in labels], fontsize=9)
        ax_bar.invert_yaxis()
        right = probability_axis_limit(probs)
        ax_bar.set_xlim(0, right)
        ax_bar.set_xlabel("probability (%)", fontsize=9)
        ax_bar.tick_params(axis="x", labelsize=9)
        for yy, pr in zip(ypos, probs, strict=True):
            ax_bar.text(pr + right * 0.01, yy, f"{pr:.1f}%", va="center", fontsize=9)
    return fig


def probability_axis_limit(probs_percent: Sequence[float]) -> float:
    """Right end of the probability axis (%): room for the largest bar and its label, so a
    top-5 at 1 % is as readable as one at 90 % (never beyond 100 %, never below 1 %)."""
    top = max([float(p) for p in probs_percent] or [0.0])
    return float(min(100.0, max(1.0, top * 1.25)))


def imagenet_finetunes(df) -> list[str]:
    """Fine-tuned ImageNet-1k checkpoints of an index table (recommended upstreams first)."""
    if df is None or len(df) == 0:
        return []

    rec = recommended_files(df)
    rows = df[df["adapt_ds"].astype(object) == "imagenet2012"]
    files = rows["adapt_filename"].astype(object).tolist()
    ups = rows["filename"].astype(object).tolist()
    ranked = sorted(zip(files, ups, strict=True), key=lambda t: (t[1] not in rec, t[0]))
    return list(dict.fromkeys(f for f, _ in ranked))


class InferencePanel:
    """Checkpoint box with Load, sample and uploaded images, Classify, top-5 chart."""

    def __init__(self, checkpoint: str = "", *, suggestions: Sequence[str] = (),
                 labels: str = "", top_k: int = 5):
        self.model_name: str | None = None
        self.params: Any = None
        self.loaded: str | None = None
        self.predictions: list | None = None
        self.figure: Any = None
        self.top_k = top_k
        self.skipped: dict[str, str] = {}  #: uploads the last Classify left out, and why
        self.stderr = StderrCapture()
        self.details = w.HTML()  # the collapsed library messages
        self._warm_up()  # TensorFlow's import overlaps with Load and choosing images
        self.samples = sample_images()
        self.messages = MessageArea()
        wide = {"description_width": "initial"}  # labels in full ("Class names")
        self.checkpoint = w.Combobox(value=checkpoint, options=list(suggestions),
                                     ensure_option=False, description="Checkpoint",
                                     placeholder="checkpoint name, timm name or file path",
                                     style=wide, layout=w.Layout(width=FULL_WIDTH))
        self.labels = w.Text(value=labels, description="Class names",
                             placeholder="default: ImageNet names for 1000 classes; or a task "
                                         "name, e.g. oxford_iiit_pet",
                             style=wide, layout=w.Layout(width=FULL_WIDTH))
        self.load_button = w.Button(description="Load", icon="download", button_style="primary")
        self.info = w.HTML()
        self.status = w.HTML()  # which source a running Load is trying
        self.use_samples = w.SelectMultiple(options=list(self.samples),
                                            value=tuple(self.samples), description="Samples",
                                            rows=len(self.samples))
        self.upload = w.FileUpload(accept="image/*", multiple=True,
                                   description="Your images")
        # One entry per upload; unselecting one leaves it out (FileUpload cannot drop one).
        self.use_uploads = w.SelectMultiple(options=[], value=(), description="Uploads",
                                            rows=3)
        self.upload.observe(self._on_upload, names="value")
        self.classify_button = w.Button(description="Classify", icon="eye",
                                        button_style="success")
        self.bf16 = w.Checkbox(value=False, indent=False,
                               description="bfloat16 matmuls (faster on CPUs with AMX; "
                                           "logits move slightly)",
                               layout=w.Layout(width="auto"))
        self.progress = w.Output()
        self.output = w.Output()
        self.load_button.on_click(self._on_load)
        self.classify_button.on_click(self._on_classify)
        self.widget = w.VBox([
            self.checkpoint, self.labels, w.HBox([self.load_button, self.info]), self.status,
            self.progress,
            w.HBox([self.use_samples, self.upload, self.use_uploads, self.classify_button],
                   layout=w.Layout(flex_flow="row wrap", max_width="100%")),
            self.bf16, self.messages.widget, self.output, self.details,
        ])

    @classmethod
    def for_session(cls, session, *, checkpoint: str = "", labels: str = "") -> InferencePanel:
        """The panel for a notebook :class:`~augreg_nb.notebook.Session`, suggesting the
        table's ImageNet fine-tunes; in smoke mode the fake fine-tuned checkpoint that the
        loopback bucket serves replaces ``checkpoint``."""
        if session.smoke_env is not None:
            served = list(session.smoke_env.checkpoints)
            finetuned = [n for n in served if "--" in n]
            return cls(finetuned[0] if finetuned else served[0], suggestions=served,
                       labels=labels)
        return cls(checkpoint, suggestions=imagenet_finetunes(session.index), labels=labels)

    def _warm_up(self) -> None:
        """Import TensorFlow in the background with its stderr notices kept for the panel."""
        def run():
            with self.stderr:
                preprocess.warm_up().join()
            self._show_library_messages()

        threading.Thread(target=run, name="augreg_nb-inference-warm-up", daemon=True).start()

    def _show_library_messages(self) -> None:
        self.details.value = details_html(self.stderr.text, "library messages")

    def _on_upload(self, change=None) -> None:
        names = list(upload_items(self.upload.value))
        kept = [n for n in self.use_uploads.value if n in names]
        new = [n for n in names if n not in self.use_uploads.options]
        self.use_uploads.options = names
        self.use_uploads.value = tuple(n for n in names if n in kept or n in new)

    def images(self) -> dict[str, Any]:
        """The images to classify: the chosen samples, then the chosen uploads that can be
        read (the others are named in :attr:`skipped`)."""
        out: dict[str, Any] = {k: self.samples[k] for k in self.use_samples.value}
        self._on_upload()  # uploads made before the observer saw them
        chosen = set(self.use_uploads.value)
        self.skipped = {}
        for name, content in upload_items(self.upload.value).items():
            if name not in chosen:
                continue
            try:
                out[name] = read_image(name, content)
            except ValueError as err:
                self.skipped[name] = str(err)
        return out

    def forget_model(self) -> None:
        """Drop the loaded model, its description and its charts (before a new Load, so a
        failed one never leaves the previous model on show)."""
        self.model_name = self.params = self.loaded = None
        self.predictions = self.figure = None
        self.info.value = ""
        self.output.clear_output()

    def _load(self, name: str):
        """Fetch ``name`` (saying which source is tried) and read it: (model name, params)."""
        resolved = resolve_checkpoint(name, on_attempt=attempt_reporter(self.status))
        self.status.value = ""
        try:
            model = parse_name(resolved.name).model
        except ValueError:
            model = None  # read off the file's shapes
        return load_pretrained(resolved.path, model_name=model)

    def _on_load(self, _button=None) -> None:
        @guarded(self.messages, "Loading the checkpoint")
        def run():
            name = self.checkpoint.value.strip()
            self.forget_model()
            if not name:
                raise ValueError("type a checkpoint name (or pick a suggestion) first")
            self.messages.show(f"loading {name} ...", "note")
            self.load_button.disabled = True
            try:
                self.progress.clear_output()
                with self.stderr:
                    self.model_name, self.params = run_in_output(self.progress, self._load,
                                                                 name)
            finally:
                self.load_button.disabled = False
                self.status.value = ""
                self._show_library_messages()
            self.loaded = name
            classes = int(np.shape(self.params["head"]["bias"])[0])
            res = checkpoint_resolution(self.model_name, self.params)
            self.info.value = (f"<b>{self.model_name}</b>, {classes:,} classes, "
                               f"{res} px")
            self.messages.show(f"{name} is loaded; press Classify.", "info")

        run()

    def _on_classify(self, _button=None) -> None:
        @guarded(self.messages, "Classifying")
        def run():
            if self.params is None:
                raise RuntimeError("no checkpoint loaded yet: press Load first")
            images = self.images()
            skipped = "\n".join(f"left out: {why}" for why in self.skipped.values())
            if not images:
                raise ValueError("no images: choose a sample or upload your own"
                                 + (f"\n{skipped}" if skipped else ""))
            try:
                with self.stderr:
                    preds = predict(self.model_name, self.params, list(images.values()),
                                    top_k=self.top_k,
                                    label_names=self.labels.value.strip() or None,
                                    matmul_dtype="bfloat16" if self.bf16.value else None)
            finally:
                self._show_library_messages()
            self.predictions = preds
            self.figure = plot_predictions(images, preds)
            self.output.clear_output()
            with self.output:
                show_figure(self.figure)
            done = f"classified {len(images)} image(s) with {self.loaded}"
            if self.bf16.value:
                done += " (bfloat16 matmuls)"
            if skipped:  # the readable ones are classified, the others named
                self.messages.show(f"{done}\n{skipped}\n(unselect it under Uploads, or "
                                   "upload it again as JPEG or PNG)", "warning",
                                   title=f"{len(self.skipped)} upload(s) left out")
            else:
                self.messages.show(done, "info")

        run()

    def _ipython_display_(self) -> None:
        from IPython.display import display

        display(self.widget)
