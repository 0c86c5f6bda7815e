"""Folders of difftrain's own pipelines carry their code (pipeline.py, generated from difftrain's source), so plain
diffusers loads them in a process where difftrain cannot be imported, and they draw the same images."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_script
from difftrain.pipeline_code import pipeline_code

TINY = ["--config", ROOT / "configs/tiny.yaml", "--max_train_steps", 2, "--checkpointing_steps", 100,
        "--validation_steps", 100]
TEXT_UNET = json.dumps(dict(block_out_channels=[16, 32], layers_per_block=1, norm_num_groups=8, attention_head_dim=2,
                             down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
                             up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"]))

# Runs with difftrain unimportable: a finder ahead of the editable install's refuses it.
PLAIN_DIFFUSERS = """
import importlib.abc, json, sys

class NoDifftrain(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] == "difftrain":
            raise ImportError("difftrain is blocked in this process")

sys.meta_path.insert(0, NoDifftrain())
import numpy as np
from diffusers import DiffusionPipeline

folder, call, out = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
pipe = DiffusionPipeline.from_pretrained(folder, custom_pipeline="pipeline", trust_remote_code=True)
np.save(out, pipe(**call, output_type="np").images)
assert not [m for m in sys.modules if m.split(".")[0] == "difftrain"]
print(type(pipe).__module__, type(pipe).__name__)
"""


def plain_diffusers_images(folder, call: dict, tmp_path) -> tuple[np.ndarray, str]:
    """Images from `folder` loaded by plain diffusers in a fresh process, and the module its class came from."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_MODULES_CACHE=str(tmp_path / "modules"), HF_HUB_OFFLINE="1")  # not the user's ~/.cache
    out = tmp_path / "images.npy"
    done = subprocess.run([sys.executable, "-c", PLAIN_DIFFUSERS, str(folder), json.dumps(call), str(out)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return np.load(out), done.stdout.split()[-2]


@pytest.fixture(scope="module", params=["pixels", "latents"])
def text_run(request, tmp_path_factory):
    """A from-scratch train_text_to_image.py run of 2 steps: in pixel space, or in a tiny VAE's latent space."""
    import train_text_to_image

    out = tmp_path_factory.mktemp("t2i") / "run"
    vae = ["--vae_name_or_path", request.getfixturevalue("tiny_sd_pipeline")] if request.param == "latents" else []
    assert run_script(train_text_to_image, [*TINY, "--output_dir", out, "--unet", TEXT_UNET, *vae,
                                            "--validation_prompts", "a handwritten digit one"]) == 0
    return out


@pytest.fixture(scope="module")
def class_run(tmp_path_factory):
    import train_unconditional

    out = tmp_path_factory.mktemp("class") / "run"
    assert run_script(train_unconditional, [*TINY, "--output_dir", out, "--class_conditional"]) == 0
    return out


def assert_same_images(ours: np.ndarray, theirs: np.ndarray) -> None:
    assert theirs.shape == ours.shape and theirs.std() > 0.01  # real images, not a blank that matches anything
    assert np.abs(theirs - ours).max() <= 1 / 255 + 1e-6


def test_a_text_to_image_folder_loads_in_plain_diffusers_and_draws_the_same_images(text_run, tmp_path):
    from difftrain.pipelines import TextToImagePipeline

    assert json.loads((text_run / "model_index.json").read_text())["_class_name"] == "TextToImagePipeline"
    call = {"prompt": ["a handwritten digit three", "the number 7"], "negative_prompt": "blurry",
            "guidance_scale": 2.0, "num_inference_steps": 3, "seed": 5}
    theirs, module = plain_diffusers_images(text_run, call, tmp_path)
    assert module.startswith("diffusers_modules.")  # the class came from the folder's pipeline.py
    ours = TextToImagePipeline.from_pretrained(text_run)(**call, output_type="np").images
    assert_same_images(ours, theirs)


def test_a_class_conditional_folder_loads_in_plain_diffusers_and_draws_the_same_images(class_run, tmp_path):
    from difftrain.pipelines import ClassConditionalPipeline

    call = {"class_labels": ["3", 7], "guidance_scale": 3.0, "num_inference_steps": 3, "seed": 11}
    theirs, module = plain_diffusers_images(class_run, call, tmp_path)
    assert module.startswith("diffusers_modules.")
    ours = ClassConditionalPipeline.from_pretrained(class_run)(**call, output_type="np").images
    assert_same_images(ours, theirs)


def test_only_our_own_pipelines_carry_code(class_run, tmp_path):
    assert (class_run / "pipeline.py").read_text() == pipeline_code("ClassConditionalPipeline")
    import train_unconditional

    out = tmp_path / "ddpm"
    assert run_script(train_unconditional, [*TINY, "--output_dir", out]) == 0
    assert (out / "model_index.json").is_file() and not (out / "pipeline.py").exists()  # a DDPMPipeline is diffusers'


@pytest.mark.parametrize("name", ["TextToImagePipeline", "ClassConditionalPipeline"])
def test_the_generated_code_imports_nothing_of_difftrain(name):
    code = pipeline_code(name)
    assert "difftrain" not in code.replace("by difftrain from", "") and "from ." not in code
    assert code.count("(DiffusionPipeline") == 1  # diffusers wants exactly one pipeline class in the file
