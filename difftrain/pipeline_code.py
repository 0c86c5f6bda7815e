"""pipeline.py, the code a folder of one of difftrain's own pipelines (TextToImagePipeline, ClassConditionalPipeline)
carries so that plain diffusers loads it, on a machine without difftrain, from the folder or its Hub repo:

    DiffusionPipeline.from_pretrained(folder_or_repo, custom_pipeline="pipeline", trust_remote_code=True)

The file is generated at save time from difftrain's own source (inspect.getsource of what the pipeline calls, its
relative imports dropped), so it runs the same code as difftrain's class, the same images for the same seed, and
there is no second copy to keep in step. model_index.json keeps `"_class_name": "<class>"`: the Hub's list form
["pipeline", "<class>"] would make diffusers load the folder's file even for difftrain's own `<class>.from_pretrained`
(and refuse it without trust_remote_code)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from . import classes, clusters, errors, latents, pipelines, text
from .data import images

FILE_NAME = "pipeline.py"  # diffusers' CUSTOM_PIPELINE_FILE_NAME: what custom_pipeline="pipeline" names
LOAD_ARGS = 'custom_pipeline="pipeline", trust_remote_code=True'  # diffusers runs a folder's code only when told to

HEADER = '''"""{name}, for plain diffusers: written by difftrain from its own source when this folder was saved.

    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(FOLDER_OR_HUB_REPO, {load_args})
"""

from __future__ import annotations
'''
# name → its import; a generated file imports only the names its code uses
IMPORTS = {"inspect": "import inspect", "warnings": "import warnings", "Callable": "from typing import Callable",
           "np": "import numpy as np", "torch": "import torch", "Image": "from PIL import Image",
           "DiffusionPipeline": "from diffusers import DiffusionPipeline",
           "StableDiffusionLoraLoaderMixin": "from diffusers.loaders import StableDiffusionLoraLoaderMixin"}
# difftrain's names the generated module defines itself; diffusers would also look for a relative import's file
RELATIVE_IMPORT = re.compile(r"^[ \t]*from \.[\w.]* import [\w, ]+\n(?:[ \t]*\n)?", re.MULTILINE)
SAMPLING = (images.to_uint8, pipelines.image_generators, pipelines.generate, pipelines.guided_predictor,
            pipelines._pipeline_output)
# TextEncoder's loading and caching need difftrain; the pipeline only encodes prompts
TEXT_ENCODER_MEMBERS = ("__init__", "device", "tokenize", "encode")
# per pipeline: (constants, what its code calls besides SAMPLING, then the class itself)
NEEDS = {
    "TextToImagePipeline": ({"MAX_TOKENS": text.MAX_TOKENS},
                            (latents.decode, (text.TextEncoder, TEXT_ENCODER_MEMBERS), pipelines.sample_shape,
                             pipelines.TextToImagePipeline)),
    "ClassConditionalPipeline": ({"CLASS_GUIDANCE": classes.CLASS_GUIDANCE},
                                 (errors.UserError, classes.label_ids, clusters.draw_clusters, clusters.drawn_names,
                                  pipelines.class_predictor,
                                  pipelines.class_names_of, pipelines.sample_shape, pipelines.ClassConditionalPipeline)),
}


def class_with(cls: type, members: tuple[str, ...]) -> str:
    """The source of `cls` with only the named members (methods or properties)."""
    found = [vars(cls)[name] for name in members]
    sources = [inspect.getsource(m.fget if isinstance(m, property) else m) for m in found]
    return f'class {cls.__name__}:\n    """{cls.__doc__}"""\n\n' + "\n".join(sources)


def source_of(part) -> str:
    return class_with(*part) if isinstance(part, tuple) else inspect.getsource(part)


def pipeline_code(pipeline_class: str) -> str:
    """The text of pipeline.py for one of difftrain's pipeline classes: it imports no difftrain."""
    constants, parts = NEEDS[pipeline_class]
    body = "\n\n\n".join([*(f"{name} = {value!r}" for name, value in constants.items()),
                           *(source_of(part).strip() for part in (*SAMPLING, *parts))])
    body = RELATIVE_IMPORT.sub("", body)
    imports = [line for name, line in IMPORTS.items() if re.search(rf"\b{name}\b", body)]
    code = "\n".join([HEADER.format(name=pipeline_class, load_args=LOAD_ARGS), *imports, "\n", body, ""])
    compile(code, FILE_NAME, "exec")  # a slip here fails the save, not a user's load on another machine
    return code


def write_pipeline_code(pipeline_class: str, folder) -> None:
    (Path(folder) / FILE_NAME).write_text(pipeline_code(pipeline_class))
