"""After training: merge the adapter into the base, convert for CTranslate2/faster-whisper,
write model cards and share on the Hub.

Merging happens in fp32 and the result is cast to the dtype asked for (fp16 by default, as
OpenAI's checkpoints ship), because an 8-bit base cannot take a merge and a half-precision
merge loses the small LoRA deltas to rounding.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch

from .checkpoint import write_atomically
from .errors import UserError
from .run import BASE_IS_BEST, RunDir, adapter_is_base

log = logging.getLogger(__name__)

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
CT2_QUANTIZATIONS = ("float16", "bfloat16", "float32", "int8", "int8_float16", "int8_bfloat16", "int8_float32", "int16")


def merge(base: str | None, adapter: str, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Save base + adapter as one plain transformers checkpoint (weights, processor,
    generation_config with language/task, model card) that ``pipeline("automatic-speech-
    recognition", model=out_dir)`` loads."""
    from .modeling import load_for_inference

    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}: use {', '.join(DTYPES)}")
    if adapter_is_base(adapter):
        log.warning("%s is the untrained adapter of step 0: %s", adapter, BASE_IS_BEST.split(": ", 1)[0])
    loaded = load_for_inference(base, adapter, torch.device("cpu"))  # fp32 on the CPU: an exact merge
    model = loaded.model.to(DTYPES[dtype])
    card = model_card("merged", loaded.base, loaded.language, loaded.task, adapter_dir=Path(adapter))

    def fill(out: Path) -> None:
        model.save_pretrained(out)
        loaded.processor.save_pretrained(out)
        loaded.processor.feature_extractor.save_pretrained(out)  # preprocessor_config.json for older readers
        (out / "README.md").write_text(card, encoding="utf-8")

    return write_atomically(Path(out_dir), fill)  # a kill or a full disk leaves no half-written model


@contextlib.contextmanager
def merged_source(model_dir: str | Path, adapter: str | None = None, dtype: str = "float16") -> Iterator[Path]:
    """The transformers folder a conversion reads: ``model_dir`` itself, or base + ``adapter``
    merged into a temporary folder that lives as long as the ``with`` block, so that a parity
    check after the conversion can score the very model that was converted."""
    if not adapter:
        yield Path(model_dir)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield Path(merge(str(model_dir), adapter, Path(tmp) / "merged", dtype=dtype))


def check_ct2_quantization(quantization: str) -> None:
    """Refuse a missing converter or an unknown type before any merge or conversion starts."""
    try:
        import ctranslate2.converters  # noqa: F401
    except ImportError:
        raise UserError("export-ct2 needs ctranslate2: pip install 'whisper-tune[export]'") from None
    if quantization not in CT2_QUANTIZATIONS:
        raise UserError(f"unknown CTranslate2 quantization {quantization!r}: use {', '.join(CT2_QUANTIZATIONS)}")


def export_ct2(
    model_dir: str | Path, out_dir: str | Path, quantization: str = "float16", adapter: str | None = None
) -> Path:
    """Convert a transformers Whisper checkpoint (or base + ``adapter``, merged on the way)
    into a CTranslate2 model folder that faster-whisper's ``WhisperModel(out_dir)`` loads."""
    check_ct2_quantization(quantization)
    from ctranslate2.converters import TransformersConverter

    with merged_source(model_dir, adapter) as source:
        if not (source / "config.json").is_file():
            raise UserError(f"{source} is not a transformers model folder (no config.json): run merge first")

        def fill(out: Path) -> None:
            files = [f for f in ("tokenizer.json", "preprocessor_config.json") if (source / f).is_file()]
            TransformersConverter(str(source), copy_files=files, load_as_float16=quantization != "float32").convert(
                str(out), quantization=quantization, force=True
            )
            if not (out / "preprocessor_config.json").exists():
                from transformers import WhisperFeatureExtractor

                extractor = WhisperFeatureExtractor.from_pretrained(str(source))
                extractor.to_json_file(str(out / "preprocessor_config.json"))
            if not (out / "tokenizer.json").exists():
                from .modeling import load_processor

                load_processor(str(source)).tokenizer.backend_tokenizer.save(str(out / "tokenizer.json"))

        return write_atomically(Path(out_dir), fill)


def _report_card(adapter_dir: Path | None) -> list[str]:
    """The adapter's report card (``card.md``, written by train or ``evaluate --card``) as a
    section of the model card, so the Hub page says where the fine-tune is worse than its base."""
    card = Path(adapter_dir) / "card.md" if adapter_dir else None
    if card is None or not card.is_file():
        return []
    text = card.read_text(encoding="utf-8").replace("# Report card", "## Report card", 1)
    return ["", text.strip()]


def model_card(
    kind: str, base: str, language: str | None, task: str, adapter_dir: Path | None = None, scores: dict | None = None
) -> str:
    """A Hub model card (YAML front matter + how to load), made offline from what the run recorded."""
    run = RunDir.of_adapter(adapter_dir) if adapter_dir else None
    record = run.read_record() if run else None
    cfg = record.config if record else {}
    scores = scores or (record.best if record else None)
    library = "peft" if kind == "adapter" else "transformers"
    front = ["---", f"library_name: {library}", f"base_model: {base}", "pipeline_tag: automatic-speech-recognition"]
    if language:
        front.append(f"language: [{language}]")
    front += ["tags: [whisper, whisper-tune, lora]", "---", ""]
    title = f"# {Path(base).name} fine-tuned with whisper-tune ({'LoRA adapter' if kind == 'adapter' else 'merged'})"
    lines = front + [title, "", f"- Base model: `{base}`", f"- Language: `{language or 'detected'}`, task: `{task}`"]
    if cfg:
        lora, data, train = cfg.get("lora", {}), cfg.get("data", {}), cfg.get("train", {})
        lines += [
            f"- Data: `{data.get('source')}` ({data.get('train_split')}), evaluated on {data.get('eval_split')}",
            f"- Base held as: {cfg.get('model', {}).get('quantization')} during training",
            f"- LoRA: r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
            f"targets={lora.get('targets')}",
            f"- Training: {record.steps} steps of batch {train.get('batch_size')}, lr "
            f"{train.get('learning_rate')}, warm-up {train.get('warmup_steps')}",
        ]
    lines += ["", "## Results", ""]
    if scores:
        lines += [
            "| metric | value |",
            "|---|---|",
            f"| WER (%) | {scores['wer']:.2f} |",
            f"| CER (%) | {scores['cer']:.2f} |",
        ]
    else:
        lines.append("Not measured yet: run `whisper-tune evaluate`.")
    lines += _report_card(adapter_dir)
    lines += ["", "## How to use", "", "```python"]
    if kind == "adapter":
        lines += [
            "from peft import PeftModel",
            "from transformers import WhisperForConditionalGeneration, WhisperProcessor",
            "",
            f'base = WhisperForConditionalGeneration.from_pretrained("{base}")',
            'model = PeftModel.from_pretrained(base, "THIS_REPO").merge_and_unload()',
            'processor = WhisperProcessor.from_pretrained("THIS_REPO")',
        ]
    else:
        lines += [
            "from transformers import pipeline",
            "",
            'asr = pipeline("automatic-speech-recognition", model="THIS_REPO")',
            f'print(asr("clip.wav", generate_kwargs={{"language": "{language or "en"}", "task": "{task}"}}))',
        ]
    lines += ["```", "", "Made with [whisper-tune](https://pypi.org/project/whisper-tune/).", ""]
    return "\n".join(lines)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload a folder (adapter or merged model, with its card) to a Hub model repo."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, folder_path=str(folder), commit_message="Upload with whisper-tune")
    except Exception as e:  # network, auth: one line, the user decides
        raise UserError(
            f"push to {repo_id} failed ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            f"log in with `hf auth login` and check the network"
        ) from None
    return str(getattr(info, "commit_url", repo_id))


def write_adapter_card(adapter_dir: Path, base: str, language: str | None, task: str) -> None:
    """Replace PEFT's template README with a card that says what was trained and how well."""
    (Path(adapter_dir) / "README.md").write_text(
        model_card("adapter", base, language, task, Path(adapter_dir)), encoding="utf-8"
    )


__all__ = [
    "check_ct2_quantization",
    "export_ct2",
    "merge",
    "merged_source",
    "model_card",
    "push_to_hub",
    "write_adapter_card",
]
