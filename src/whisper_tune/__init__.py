"""whisper-tune: fine-tune multilingual Whisper with a quantized base and LoRA adapters.

The public surface is small and importable without the CLI::

    from whisper_tune import open_source, prepare, load_prepared, PrepareOptions
"""

from .audio import SAMPLE_RATE, load_audio
from .config import DataConfig
from .demo_data import DemoDataOptions, make_demo_data
from .errors import UserError
from .features import SpeechCollator, log_mel
from .prepare import PrepareOptions, PrepareResult, load_prepared, prepare
from .processor import build_processor, load_tokenizer, resolve_language
from .sources import DataSource, Row, open_source

__version__ = "0.1.0"

__all__ = [
    "SAMPLE_RATE",
    "DataConfig",
    "DataSource",
    "DemoDataOptions",
    "PrepareOptions",
    "PrepareResult",
    "Row",
    "SpeechCollator",
    "UserError",
    "build_processor",
    "load_audio",
    "load_prepared",
    "load_tokenizer",
    "log_mel",
    "make_demo_data",
    "open_source",
    "prepare",
    "resolve_language",
]
