"""Autoguidance of unconditional models: the guide a run keeps (guide_unet/), the predictor's formula, and sample.py /
evaluate.py / the config resolving and refusing it."""

import json

import pytest
import torch

from conftest import ROOT, run_script, tiny_2d_unet
from difftrain.autoguidance import AUTOGUIDANCE, AUTOGUIDANCE_SNAPSHOT, GUIDE_FOLDER, snapshot_step
from difftrain.unconditional_config import UnconditionalConfig, autoguidance_snapshot
from difftrain.errors import UserError
from difftrain.options import parse
from difftrain.pipelines import autoguided_predictor

TINY = ["--config", ROOT / "configs/tiny.yaml"]


@pytest.fixture(scope="module")
def guided_run(tmp_path_factory, datasets_cache):
    """8 updates with the guide kept at a quarter of the run (after update 2) and a checkpoint there."""
    import train_unconditional as script

    out = tmp_path_factory.mktemp("autoguided") / "run"
    assert run_script(script, [*TINY, "--output_dir", out, "--max_train_steps", 8, "--checkpointing_steps", 2,
                               "--validation_steps", 8, "--autoguidance_snapshot", 0.25]) == 0
    return out


def test_the_predictor_is_guide_plus_scale_times_the_difference():
    from diffusers import DDPMScheduler

    schedule = dict(DDPMScheduler(beta_schedule="squaredcos_cap_v2").config)  # t = 500: σ = 1, inside the interval
    good, weak = tiny_2d_unet(0).eval(), tiny_2d_unet(1).eval()
    x, t = torch.randn(2, good.config.in_channels, 16, 16), torch.tensor(500)
    with torch.no_grad():
        g, w = good(x, t).sample, weak(x, t).sample
        assert torch.allclose(autoguided_predictor(good, weak, 2.5, schedule)(x, t), w + 2.5 * (g - w), atol=1e-6)
        assert torch.equal(autoguided_predictor(good, weak, 1.0, schedule)(x, t), g)  # scale 1: the model alone
        assert torch.equal(autoguided_predictor(good, None, 2.5, schedule)(x, t), g)  # no guide: the model alone
    assert autoguided_predictor(good, weak, 2.5, schedule).network_calls(t) == 2


def test_the_guide_acts_only_inside_its_noise_interval():
    """guidance_interval: σ(t) = √((1 − ᾱ_t)/ᾱ_t) of the training schedule inside (low, high]; outside, the predictor
    is the plain model and costs one forward."""
    from diffusers import DDPMScheduler

    from difftrain.autoguidance import guidance_interval

    schedule = DDPMScheduler(beta_schedule="squaredcos_cap_v2")
    alphas = schedule.alphas_cumprod.double()
    sigma = lambda t: float(((1 - alphas[t]) / alphas[t]).sqrt())  # noqa: E731
    guided = guidance_interval(dict(schedule.config), (1.0, 3.0))
    inside = [t for t in range(1000) if guided(t)]
    assert inside == [t for t in range(1000) if 1.0 < sigma(t) <= 3.0] and 0 < len(inside) < 1000
    assert guided(inside[0] - 0.5) == (1.0 < (sigma(inside[0] - 1) + sigma(inside[0])) / 2 <= 3.0)  # in between
    assert guidance_interval({"sigma_data": 0.5}, (1.0, 3.0))(torch.tensor(0.25 * 0.7))  # EDM: t = ln(σ)/4, σ = 2.01
    good, weak = tiny_2d_unet(0).eval(), tiny_2d_unet(1).eval()
    predict = autoguided_predictor(good, weak, 2.5, dict(schedule.config), (1.0, 3.0))
    x, outside = torch.randn(1, good.config.in_channels, 16, 16), torch.tensor(inside[-1] + 1)
    with torch.no_grad():
        assert torch.equal(predict(x, outside), good(x, outside).sample) and predict.network_calls(outside) == 1
        t = torch.tensor(inside[0])
        g, w = good(x, t).sample, weak(x, t).sample
        assert torch.allclose(predict(x, t), w + 2.5 * (g - w), atol=1e-6) and predict.network_calls(t) == 2


def test_the_snapshot_step_and_the_resolved_default():
    assert snapshot_step(0.25, 3750) == 938 and snapshot_step(0.25, 2) == 1 and snapshot_step(0.0, 100) is None
    assert autoguidance_snapshot(parse(UnconditionalConfig, ["--num_clusters", "0"])) == AUTOGUIDANCE_SNAPSHOT
    assert autoguidance_snapshot(parse(UnconditionalConfig, [])) == 0.0  # the default conditions on pixel clusters
    assert autoguidance_snapshot(parse(UnconditionalConfig, ["--class_conditional"])) == 0.0
    assert autoguidance_snapshot(parse(UnconditionalConfig, ["--pretrained_model_name_or_path", "x"])) == 0.0
    for bad, says in ((["--autoguidance_snapshot", "1"], "fraction of the run"),
                      (["--class_conditional", "--autoguidance_snapshot", "0.3"], "classifier-free guidance"),
                      (["--autoguidance_snapshot", "0", "--num_clusters", "0", "--validation_guidance_scale", "2"], "--class_conditional")):
        with pytest.raises(UserError, match=says):
            parse(UnconditionalConfig, bad)


def test_the_guide_is_the_shipping_weights_at_the_snapshot(guided_run):
    from diffusers import UNet2DModel

    guide = UNet2DModel.from_pretrained(guided_run / GUIDE_FOLDER)
    ema_then = UNet2DModel.from_pretrained(guided_run / "checkpoint-2" / "unet_ema")
    final = UNet2DModel.from_pretrained(guided_run / "unet")
    for a, b, c in zip(guide.parameters(), ema_then.parameters(), final.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(guide.parameters(), final.parameters()))
    recorded = (guided_run / "training_config.yaml").read_text()
    assert "autoguidance_snapshot: 0.25" in recorded and f"validation_guidance_scale: {AUTOGUIDANCE}" in recorded


def test_sample_py_autoguides_stochastic_samplers_by_default_and_scale_1_turns_it_off(guided_run, tmp_path):
    import sample

    outs, records = {}, {}
    other = ["--guidance_scale", AUTOGUIDANCE + 1]
    for name, scheduler, extra in (("default", "euler_a", []), ("off", "euler_a", ["--guidance_scale", 1]),
                                   ("other", "euler_a", other), ("ddim", "ddim", []),
                                   ("ddim-off", "ddim", ["--guidance_scale", 1]), ("ddim-asked", "ddim", other),
                                   ("ddim-eta", "ddim", ["--eta", 1])):
        outs[name] = tmp_path / name
        assert run_script(sample, ["--model", guided_run, "--num_images", 2, "--num_inference_steps", 5,
                                   "--scheduler", scheduler, "--output_dir", outs[name], *extra]) == 0
        records[name] = json.loads((outs[name] / "metadata.jsonl").read_text().splitlines()[0])
    assert records["default"]["guidance_scale"] == AUTOGUIDANCE
    assert f"--guidance_scale {AUTOGUIDANCE:g}" in records["default"]["command"]
    # a deterministic sampler samples unguided unless a scale is asked for (the guide makes ddim worse)
    assert records["ddim"]["guidance_scale"] == 1.0 and records["ddim-asked"]["guidance_scale"] == AUTOGUIDANCE + 1
    assert records["ddim-eta"]["guidance_scale"] == AUTOGUIDANCE  # ddim with eta > 0 draws fresh noise
    images = {k: (v / "grid.png").read_bytes() for k, v in outs.items()}
    assert images["ddim"] == images["ddim-off"] != images["ddim-asked"]
    assert len({images[k] for k in ("default", "off", "other")}) == 3  # the scale changes the images


def test_unset_steps_are_autoguidance_steps_where_autoguidance_is_on(guided_run, tmp_path):
    """--num_inference_steps unset: AUTOGUIDANCE_STEPS for an autoguided model with a stochastic sampler (sample.py
    records and regenerates with them), 50 for a deterministic one, a model without a guide or a conditional one;
    asked steps are kept."""
    from types import SimpleNamespace

    import sample
    from difftrain.autoguidance import AUTOGUIDANCE_STEPS
    from difftrain.loading import DEFAULT_STEPS, load_model, resolve_steps

    model = load_model(str(guided_run), device=torch.device("cpu"))
    assert AUTOGUIDANCE_STEPS != DEFAULT_STEPS
    assert resolve_steps(model, None, "euler_a") == resolve_steps(model, None, "ddim", eta=1.0) == AUTOGUIDANCE_STEPS
    assert resolve_steps(model, None, "ddim") == DEFAULT_STEPS and resolve_steps(model, 7, "euler_a") == 7
    for guide, conditional in ((None, False), (object(), True)):
        other = SimpleNamespace(guide=guide, conditional=conditional, scheduler_config=model.scheduler_config)
        assert resolve_steps(other, None, "euler_a") == DEFAULT_STEPS
    for scheduler, steps in (("euler_a", AUTOGUIDANCE_STEPS), ("ddim", DEFAULT_STEPS)):
        out = tmp_path / scheduler
        assert run_script(sample, ["--model", guided_run, "--num_images", 1, "--scheduler", scheduler,
                                   "--output_dir", out]) == 0
        record = json.loads((out / "metadata.jsonl").read_text().splitlines()[0])
        assert record["steps"] == steps and f"--num_inference_steps {steps}" in record["command"]


def test_scale_for_sampler_guides_only_stochastic_samplers():
    from difftrain.autoguidance import scale_for_sampler
    from difftrain.schedulers import SCHEDULERS

    config = {"prediction_type": "epsilon", "num_train_timesteps": 1000}
    for name, spec in SCHEDULERS.items():
        assert scale_for_sampler(2.5, name, config) == (2.5 if spec.stochastic else 1.0), name
    assert {n for n, s in SCHEDULERS.items() if s.stochastic} >= {"ddpm", "euler_a"}
    assert scale_for_sampler(2.5, "ddim", config, eta=0.5) == 2.5


def test_guidance_is_refused_for_an_unconditional_model_without_a_guide(guided_run, tmp_path, capsys):
    import sample

    assert run_script(sample, ["--model", guided_run / "checkpoint-8", "--guidance_scale", 2,
                               "--output_dir", tmp_path / "x"]) == 2  # a checkpoint samples unguided
    assert "drop --guidance_scale" in capsys.readouterr().err
