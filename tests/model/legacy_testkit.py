"""Tiny legacy LLaVA checkpoints in the layouts their authors released, and the reference recipe that prompts them.

Layouts (file names, keys, config fields and tokenizer files as released; only the sizes are tiny):

- LLaVA-1.5 (`llava` model type, Vicuna): sharded `pytorch_model-*.bin` with an index, the CLIP tower inside
  the checkpoint under `model.vision_tower.vision_tower.vision_model.*` (transformers 4 names), a
  SentencePiece `tokenizer.model` with `legacy: false`;
- LLaVA-Med v1.5 (`llava_mistral`): sharded safetensors, no tower inside, `tokenizer.model` with `legacy: true`;
- HuatuoGPT-Vision-7B (`llava_qwen2`): sharded safetensors with the tower inside and its copy in
  `./vit/clip_vit_large_patch14_336`, a Qwen2 byte-level BPE tokenizer as vocab.json + merges.txt;
- an older LLaVA (`llava_llama`): one `pytorch_model.bin`, the `linear` projector, `<im_start>`/`<im_end>`
  around the image (`mm_use_im_start_end`), and the buffers older transformers saved (position_ids, inv_freq).

The reference recipe follows the reference code's documented behaviour: LLaVA's `conv_vicuna_v1`
(SeparatorStyle.TWO), LLaVA-Med's `conv_mistral_instruct` (SeparatorStyle.LLAMA_2, empty system),
HuatuoGPT-Vision's `cli.py` (`preprocess_huatuo`), `tokenizer_image_token` (each chunk around
`<image>` tokenised on its own, -200 in between), `expand2square` with the image mean, and the
forward that splices projected patch features in at the sentinel.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

IMAGE_SENTINEL = -200
CLIP_MEAN, CLIP_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
CORPUS = [
    "A chat between a curious user and an artificial intelligence assistant.",
    "The assistant gives helpful, detailed, and polite answers to the user's questions.",
    "USER: What is shown in this image? ASSISTANT: A chest X-ray with a small nodule.",
    "Is there a lesion in the left lung? Yes, there is an opacity in the lower lobe.",
    "Describe the MRI scan. The brain shows no acute infarct. Is it normal?",
]
TOWER = {"image_size": 28, "patch_size": 14, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 2,
         "intermediate_size": 64}
LLM = {"hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4, "num_hidden_layers": 2,
       "num_key_value_heads": 2, "max_position_embeddings": 512}


@dataclass(frozen=True)
class Layout:
    name: str  # the released folder's name (HuatuoGPT-Vision's cli.py picks its format by it)
    model_type: str
    llm: str
    architecture: str
    tokenizer: str  # "sp-legacy-false" | "sp-legacy-true" | "qwen2"
    prompt: str  # "vicuna_v1" | "mistral_instruct" | "huatuo"
    weights: str  # "bin" | "bin-sharded" | "safetensors-sharded"
    tower: str  # "inside" | "outside" | "inside+vit" | "inside-old"
    released: dict  # the LLM fields of the released config.json
    projector: str = "mlp2x_gelu"
    start_end: bool = False

    @property
    def needs_tower_folder(self) -> bool:
        return self.tower != "inside+vit"


LAYOUTS = {
    layout.name: layout for layout in [
        Layout("llava-v1.5-7b", "llava", "llama", "LlavaLlamaForCausalLM", "sp-legacy-false", "vicuna_v1",
               "bin-sharded", "inside", {"rms_norm_eps": 1e-5, "rope_scaling": None, "pretraining_tp": 1,
                                         "transformers_version": "4.31.0", "torch_dtype": "float16"}),
        Layout("llava-med-v1.5-mistral-7b", "llava_mistral", "mistral", "LlavaMistralForCausalLM", "sp-legacy-true",
               "mistral_instruct", "safetensors-sharded", "outside",
               {"rms_norm_eps": 1e-5, "rope_theta": 1000000.0, "sliding_window": None, "torch_dtype": "bfloat16",
                "transformers_version": "4.36.2"}),
        Layout("HuatuoGPT-Vision-7B", "llava_qwen2", "qwen2", "LlavaQwen2ForCausalLM", "qwen2", "huatuo",
               "safetensors-sharded", "inside+vit",
               {"rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "use_sliding_window": False, "sliding_window": 131072,
                "max_window_layers": 28, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
                "tokenizer_model_max_length": 4096}),
        Layout("llava-linear-im-start-end", "llava_llama", "llama", "LlavaLlamaForCausalLM", "sp-legacy-false",
               "vicuna_v1", "bin", "inside-old", {"rms_norm_eps": 1e-6, "torch_dtype": "float16"},
               projector="linear", start_end=True),
    ]
}


# ---- tokenizers, as released -------------------------------------------------------------------------------

@lru_cache(maxsize=None)
def sentencepiece_model() -> bytes:
    """A real SentencePiece BPE model (byte fallback, dummy prefix: Llama's settings), 400 pieces."""
    import sentencepiece as spm

    buffer = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 20), model_writer=buffer, vocab_size=400, model_type="bpe", byte_fallback=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        num_threads=1, character_coverage=1.0, minloglevel=2)
    return buffer.getvalue()


def _added(content: str) -> dict:
    return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": False, "rstrip": False,
            "single_word": False}


def write_sentencepiece_tokenizer(folder: Path, legacy: bool, extra: tuple[str, ...] = ()) -> None:
    """tokenizer.model + tokenizer_config.json + special_tokens_map.json (+ added_tokens.json), LlamaTokenizer."""
    (folder / "tokenizer.model").write_bytes(sentencepiece_model())
    specials = {"bos_token": _added("<s>"), "eos_token": _added("</s>"), "unk_token": _added("<unk>")}
    config = {"add_bos_token": True, "add_eos_token": False, "clean_up_tokenization_spaces": False, "legacy": legacy,
              "model_max_length": 2048, "pad_token": None, "padding_side": "right", "sp_model_kwargs": {},
              "tokenizer_class": "LlamaTokenizer", **specials}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps(specials, indent=2))
    if extra:
        (folder / "added_tokens.json").write_text(json.dumps({t: 400 + i for i, t in enumerate(extra)}))


def write_qwen2_tokenizer(folder: Path) -> None:
    """vocab.json + merges.txt (a byte-level BPE trained here) + added_tokens.json + tokenizer_config.json."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(CORPUS * 20, trainers.BpeTrainer(
        vocab_size=400, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    bpe.model.save(str(folder))
    size = bpe.get_vocab_size()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    (folder / "added_tokens.json").write_text(json.dumps({t: size + i for i, t in enumerate(specials)}))
    decoder = {str(size + i): {**_added(t), "special": True} for i, t in enumerate(specials)}
    for entry in decoder.values():
        entry.pop("__type")
    config = {"add_prefix_space": False, "added_tokens_decoder": decoder, "bos_token": None,
              "clean_up_tokenization_spaces": False, "eos_token": "<|endoftext|>", "errors": "replace",
              "model_max_length": 32768, "pad_token": "<|endoftext|>", "split_special_tokens": False,
              "tokenizer_class": "Qwen2Tokenizer", "unk_token": None}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    (folder / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                                "pad_token": "<|endoftext|>"}))


def write_tokenizer(folder: Path, layout: Layout) -> None:
    if layout.tokenizer == "qwen2":
        write_qwen2_tokenizer(folder)
    else:
        extra = ("<im_start>", "<im_end>") if layout.start_end else ()
        write_sentencepiece_tokenizer(folder, legacy=layout.tokenizer == "sp-legacy-true", extra=extra)


# ---- vision tower folders ----------------------------------------------------------------------------------

def write_tower_folder(folder: Path, seed: int, full_clip: bool) -> None:
    """A CLIP tower folder: openai's layout (a whole CLIPModel) or a vision-only one, plus preprocessor_config."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    if full_clip:
        text = {"vocab_size": 99, "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                "intermediate_size": 32}
        CLIPModel(CLIPConfig(text_config=text, vision_config=TOWER, projection_dim=16)).save_pretrained(folder)
    else:
        CLIPVisionModel(CLIPVisionConfig(**TOWER)).save_pretrained(folder)
    size = TOWER["image_size"]
    CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                       image_mean=CLIP_MEAN, image_std=CLIP_STD).save_pretrained(folder)


def released_clip_keys(layers: int) -> set[str]:
    """The CLIP tower's parameter names as transformers 4 saved them inside LLaVA checkpoints."""
    names = ["embeddings.class_embedding", "embeddings.patch_embedding.weight", "embeddings.position_embedding.weight",
             "pre_layrnorm.weight", "pre_layrnorm.bias", "post_layernorm.weight", "post_layernorm.bias"]
    for i in range(layers):
        for part in ("self_attn.k_proj", "self_attn.v_proj", "self_attn.q_proj", "self_attn.out_proj", "layer_norm1",
                     "mlp.fc1", "mlp.fc2", "layer_norm2"):
            names += [f"encoder.layers.{i}.{part}.weight", f"encoder.layers.{i}.{part}.bias"]
    return {"vision_model." + name for name in names}


# ---- checkpoints -------------------------------------------------------------------------------------------

@dataclass
class Reference:
    """The parts as the reference code holds them, to run its forward."""

    llm: torch.nn.Module
    tower: torch.nn.Module
    projector: torch.nn.Module
    tokenizer_dir: Path
    tower_dir: Path  # its preprocessor_config.json is what the reference preprocessing reads
    select_layer: int = -2


def write_legacy_checkpoint(folder: Path, layout: Layout, tower_dir: Path) -> Reference:
    """`folder/<layout.name>` in the released layout; the reference parts it was written from."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

    root = folder / layout.name
    root.mkdir(parents=True)
    write_tokenizer(root, layout)
    vocab = len(AutoTokenizer.from_pretrained(root))
    torch.manual_seed(1)
    llm = AutoModelForCausalLM.from_config(AutoConfig.for_model(layout.llm, vocab_size=vocab, **LLM, **{
        k: v for k, v in layout.released.items() if k not in ("torch_dtype", "transformers_version")}))
    if layout.tower == "inside+vit":
        tower_dir = root / "vit" / "clip_vit_large_patch14_336"
        write_tower_folder(tower_dir, seed=2, full_clip=False)
    tower = CLIPVisionModel.from_pretrained(tower_dir)
    if layout.tower in ("inside", "inside-old"):  # weights of its own (a tuned tower), not the folder's
        torch.manual_seed(3)
        tower = CLIPVisionModel(tower.config)
    hidden = TOWER["hidden_size"]
    projector = (torch.nn.Sequential(torch.nn.Linear(hidden, 64), torch.nn.GELU(), torch.nn.Linear(64, 64))
                 if layout.projector == "mlp2x_gelu" else torch.nn.Linear(hidden, 64))
    state = dict(llm.state_dict())
    state.update({f"model.mm_projector.{k}": v for k, v in projector.state_dict().items()})
    if layout.tower != "outside":
        carried = {f"vision_model.{k}": v for k, v in tower.state_dict().items()}
        assert set(carried) == released_clip_keys(TOWER["num_hidden_layers"])
        if layout.tower == "inside-old":  # buffers transformers < 4.31 saved too
            carried["vision_model.embeddings.position_ids"] = torch.arange(5)[None]
            state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
        state.update({f"model.vision_tower.vision_tower.{k}": v for k, v in carried.items()})
    _save_weights(root, {k: v.contiguous() for k, v in state.items()}, layout.weights)
    mm_tower = ("./vit/clip_vit_large_patch14_336" if layout.tower == "inside+vit"
                else "openai/clip-vit-large-patch14-336")
    config = {
        "architectures": [layout.architecture], "model_type": layout.model_type, "vocab_size": vocab,
        "hidden_act": "silu", "initializer_range": 0.02, "bos_token_id": 1, "eos_token_id": 2, "use_cache": True,
        "tie_word_embeddings": False, **LLM, **layout.released,
        "image_aspect_ratio": "pad", "mm_hidden_size": hidden, "mm_projector_type": layout.projector,
        "mm_use_im_patch_token": False, "mm_use_im_start_end": layout.start_end, "mm_vision_select_feature": "patch",
        "mm_vision_select_layer": -2, "mm_vision_tower": mm_tower, "freeze_mm_mlp_adapter": False,
        "tune_mm_mlp_adapter": False, "use_mm_proj": True, "mm_patch_merge_type": "flat",
    }
    (root / "config.json").write_text(json.dumps(config, indent=2))
    return Reference(llm.eval(), tower.eval(), projector.eval(), root, tower_dir)


def _save_weights(root: Path, state: dict[str, torch.Tensor], kind: str) -> None:
    from safetensors.torch import save_file

    if kind == "bin":
        torch.save(state, root / "pytorch_model.bin")
        return
    keys = list(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    safetensors = kind == "safetensors-sharded"
    names = [f"model-0000{i + 1}-of-00002.safetensors" if safetensors else f"pytorch_model-0000{i + 1}-of-00002.bin"
             for i in range(2)]
    for name, part in zip(names, halves):
        shard = {k: state[k] for k in part}
        save_file(shard, str(root / name), metadata={"format": "pt"}) if safetensors else torch.save(shard, root / name)
    index = {"metadata": {"total_size": sum(t.numel() * t.element_size() for t in state.values())},
             "weight_map": {k: name for name, part in zip(names, halves) for k in part}}
    index_name = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    (root / index_name).write_text(json.dumps(index, indent=2))


# ---- the reference recipe ------------------------------------------------------------------------------------

def reference_prompt(layout: Layout, turns: list[tuple[str, str | None]]) -> str:
    """The prompt string the reference code builds; `turns` end with (question, None)."""
    if layout.prompt == "vicuna_v1":  # conv_vicuna_v1: sep " " after USER turns, sep2 "</s>" after ASSISTANT ones
        text = ("A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
                "detailed, and polite answers to the user's questions. ")
        for question, answer in turns:
            text += f"USER: {question} " + (f"ASSISTANT: {answer}</s>" if answer is not None else "ASSISTANT:")
        return text
    if layout.prompt == "mistral_instruct":  # conv_mistral_instruct: LLAMA_2 style, no system, sep2 "</s>"
        return "".join(f"[INST] {q} [/INST]" + (f" {a} </s>" if a is not None else "") for q, a in turns)
    raise ValueError(layout.prompt)


def tokenizer_image_token(tokenizer, prompt: str, special_tokens: bool = True) -> list[int]:
    """LLaVA's recipe: each chunk around <image> tokenised on its own; the first chunk's BOS kept, later ones dropped."""
    chunks = [tokenizer(chunk, add_special_tokens=special_tokens).input_ids for chunk in prompt.split("<image>")]
    keep_bos = bool(chunks[0]) and chunks[0][0] == tokenizer.bos_token_id
    ids = chunks[0][:]
    for chunk in chunks[1:]:
        ids += [IMAGE_SENTINEL] + chunk[1 if keep_bos else 0:]
    return ids


def reference_ids(layout: Layout, tokenizer, turns: list[tuple[str, str | None]]) -> list[int]:
    """Prompt ids with -200 where the image goes, as the reference code feeds its model."""
    if layout.prompt != "huatuo":
        return tokenizer_image_token(tokenizer, reference_prompt(layout, turns))
    ids: list[int] = []  # cli.py preprocess_huatuo: past turns as user part + answer part, then the question
    for question, answer in turns[:-1]:
        ids += tokenizer_image_token(tokenizer, f"<|user|>\n{question.strip()}\n", special_tokens=False)
        ids += tokenizer(f"<|assistant|>\n{answer} \n", add_special_tokens=False).input_ids
    last = f"<|user|>\n{turns[-1][0].strip()}\n<|assistant|>\n"
    return ids + tokenizer_image_token(tokenizer, last, special_tokens=False)


def reference_pixels(image, tower_dir: Path) -> torch.Tensor:
    """expand2square with the image mean (as integers 0..255), then the tower's CLIPImageProcessor."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor.from_pretrained(tower_dir)
    width, height = image.size
    side = max(width, height)
    square = Image.new(image.mode, (side, side), tuple(int(x * 255) for x in processor.image_mean))
    square.paste(image, ((side - width) // 2, (side - height) // 2))
    return processor.preprocess(square, return_tensors="pt")["pixel_values"]


@torch.no_grad()
def reference_logits(reference: Reference, ids: list[int], pixels: torch.Tensor) -> torch.Tensor:
    """Tower hidden state (select layer, CLS dropped) → projector → spliced in at the sentinel → LLM."""
    features = reference.tower(pixels, output_hidden_states=True).hidden_states[reference.select_layer][:, 1:]
    image = reference.projector(features)[0]
    at = ids.index(IMAGE_SENTINEL)
    embed = reference.llm.get_input_embeddings()
    sequence = torch.cat([embed(torch.tensor([ids[:at]])), image[None], embed(torch.tensor([ids[at + 1:]]))], dim=1)
    return reference.llm(inputs_embeds=sequence).logits
