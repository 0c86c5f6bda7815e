"""Write the README's flag tables from difftrain/config.py (tests/test_readme.py checks they match):
    python tools/flag_tables.py"""

import re
import sys
from pathlib import Path

from difftrain import config, inference_config, text_config
from difftrain.options import flag_table
from difftrain.unconditional_config import UnconditionalConfig

README = Path(__file__).resolve().parents[1] / "README.md"
TABLES = {  # marker → (schema, the schema whose flags it leaves out)
    "train_unconditional": (UnconditionalConfig, None),
    "train_text_to_image": (text_config.TextToImageConfig, config.TrainConfig),
    "train_text_to_image_lora": (text_config.LoraTextToImageConfig, text_config.TextToImageConfig),
    "sample": (inference_config.SampleConfig, None),
    "evaluate": (inference_config.EvaluateConfig, None),
}


def render(text: str) -> str:
    for marker, (cls, beyond) in TABLES.items():
        pattern = re.compile(rf"(<!-- flags:{marker} -->\n).*?(<!-- /flags -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no <!-- flags:{marker} --> ... <!-- /flags --> block")
        text = pattern.sub(lambda m: m.group(1) + flag_table(cls, beyond) + m.group(2), text)
    return text


if __name__ == "__main__":
    README.write_text(render(README.read_text()))
    sys.exit(0)
