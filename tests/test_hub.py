"""Hub push with a stand-in for HfApi that records the calls (no network here)."""

from concurrent.futures import Future

from huggingface_hub.utils import filter_repo_objects

from conftest import ROOT, snapshot
from difftrain import hub
from difftrain.unconditional_config import UnconditionalConfig


class RecordingApi:
    calls = []

    def __init__(self, token=None):
        RecordingApi.calls.append(("init", {"token": token}))

    def whoami(self):
        RecordingApi.calls.append(("whoami", {}))
        return {"name": "me"}

    def create_repo(self, repo_id, **kwargs):
        RecordingApi.calls.append(("create_repo", {"repo_id": repo_id, **kwargs}))

    def upload_folder(self, **kwargs):
        RecordingApi.calls.append(("upload_folder", kwargs))
        done = Future()
        done.set_result("commit")
        return done


def test_push_uploads_the_pipeline_and_card_never_checkpoints_or_the_token(tmp_path, train_unconditional,
                                                                          monkeypatch, capsys):
    RecordingApi.calls = []
    monkeypatch.setattr(hub, "HfApi", RecordingApi)
    out = tmp_path / "run"
    code = train_unconditional("--config", ROOT / "configs/tiny.yaml", "--output_dir", out, "--push_to_hub",
                               "--hub_model_id", "me/tiny-ddpm", "--hub_token", "hf_SECRET", "--hub_private_repo",
                               "--save_model_epochs", 100)
    assert code == 0
    names = [name for name, _ in RecordingApi.calls]
    # the token is checked before training; one push: at the end (save_model_epochs > epochs)
    assert names == ["init", "whoami", "init", "create_repo", "upload_folder"]
    create, upload = RecordingApi.calls[3][1], RecordingApi.calls[4][1]
    assert create["repo_id"] == "me/tiny-ddpm" and create["private"] is True and create["exist_ok"] is True
    assert upload["repo_id"] == "me/tiny-ddpm" and upload["folder_path"] == str(out)
    assert upload["run_as_future"] is True and upload["token"] == "hf_SECRET"
    files = list(snapshot(out))
    uploaded = set(filter_repo_objects(files, ignore_patterns=upload["ignore_patterns"]))
    assert {"model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
            "scheduler/scheduler_config.json", "README.md", "training_config.yaml", "samples/step-20.png"} <= uploaded
    assert not any(f.startswith(("checkpoint-", "logs/")) for f in uploaded)
    assert any(f.startswith("checkpoint-20/") for f in files)  # they exist, they just are not uploaded
    card = (out / "README.md").read_text()
    assert "me/tiny-ddpm" in card and "DDPMPipeline" in card and "20 optimizer steps" in card
    assert "library_name: diffusers" in card and "![samples](samples/step-20.png)" in card
    printed = capsys.readouterr()
    assert all(b"hf_SECRET" not in data for data in snapshot(out).values())
    assert "hf_SECRET" not in printed.out + printed.err


def test_default_repo_id_is_the_output_folder_name(tmp_path):
    from difftrain.config import TrainConfig

    assert hub.default_repo_id(TrainConfig(output_dir=str(tmp_path / "my-model"))) == "my-model"


def test_text_to_image_cards_show_a_prompt():
    from difftrain import config, text_config
    from difftrain.hub import model_card

    cfg = config.parse(text_config.TextToImageConfig, ["--validation_prompts", "a red circle"])
    plain = ('from diffusers import DiffusionPipeline\n\n'
             '# trust_remote_code: the pipeline\'s class is the code in the repo\'s pipeline.py\n'
             'pipeline = DiffusionPipeline.from_pretrained("me/t2i", custom_pipeline="pipeline", trust_remote_code=True)')
    for pipeline_class, loader in (("TextToImagePipeline", plain),
                                   ("StableDiffusionPipeline", "from diffusers import StableDiffusionPipeline\n\n"
                                    'pipeline = StableDiffusionPipeline.from_pretrained("me/t2i")')):
        card = model_card(cfg, repo_id="me/t2i", global_step=3, pipeline_class=pipeline_class, grid=None)
        assert loader in card and 'pipeline("a red circle", guidance_scale=1.25)' in card and "text-to-image" in card
        assert "difftrain." not in card  # loads without difftrain installed


def test_class_conditional_cards_load_in_plain_diffusers():
    from difftrain import config
    from difftrain.hub import model_card

    cfg = config.parse(UnconditionalConfig, ["--class_conditional"])
    card = model_card(cfg, repo_id="me/classes", global_step=3, pipeline_class="ClassConditionalPipeline", grid=None)
    assert 'DiffusionPipeline.from_pretrained("me/classes", custom_pipeline="pipeline", trust_remote_code=True)' in card
    assert "pipeline(class_labels=pipeline.class_names[:4], guidance_scale=2.0)" in card and "difftrain." not in card


def test_lora_cards_name_the_base_and_load_the_adapters_on_it():
    from difftrain import config, text_config
    from difftrain.hub import model_card

    cfg = config.parse(text_config.TextToImageConfig, ["--pretrained_model_name_or_path", "me/base-sd", "--rank", "8",
                                                  "--validation_prompts", "a red circle"])
    card = model_card(cfg, repo_id="me/sd-lora", global_step=3, pipeline_class="StableDiffusionPipeline", grid=None)
    assert "base_model: me/base-sd" in card and "Rank-8 LoRA" in card and "- lora" in card
    assert 'StableDiffusionPipeline.from_pretrained("me/base-sd")\npipeline.load_lora_weights("me/sd-lora")' in card
    # on a base of difftrain's own: the base loads in plain diffusers, the adapters as on Stable Diffusion
    card = model_card(cfg, repo_id="me/t2i-lora", global_step=3, pipeline_class="TextToImagePipeline", grid=None)
    assert ('DiffusionPipeline.from_pretrained("me/base-sd", custom_pipeline="pipeline", trust_remote_code=True)\n'
            'pipeline.load_lora_weights("me/t2i-lora")') in card


def test_push_to_hub_offline_fails_before_training(tmp_path, train_unconditional, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    out = tmp_path / "run"
    assert train_unconditional("--config", ROOT / "configs/tiny.yaml", "--output_dir", out, "--push_to_hub",
                               "--hub_token", "hf_x") == 2
    err = capsys.readouterr().err
    assert "--push_to_hub: the Hub cannot be used" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_latent_runs_card_loads_it_with_difftrains_pipeline():
    card = hub.model_card(UnconditionalConfig(vae_name_or_path="mock"), repo_id="me/latent", global_step=5,
                          pipeline_class="LatentDiffusionPipeline", grid=None)
    assert 'LatentDiffusionPipeline.from_pretrained("me/latent")' in card and "latent-diffusion" in card
