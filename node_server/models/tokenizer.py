"""An offline Qwen2-style tokenizer for synthetic models.

The real Qwen tokenizer cannot be downloaded here, so synthetic models carry a small byte-level
BPE trained on a built-in corpus, with Qwen's pre-tokenizer regex and the Qwen-VL special tokens.
The corpus repeats DreamLite's prompt templates so that their system prefixes come out with the
same token counts as the real tokenizer (64 before the image in the edit template, 34 before the
prompt in the generate template): the stock pipeline's fixed drop indices then stay correct.
"""

from __future__ import annotations

from functools import lru_cache

# Qwen-VL special tokens, in the order the real vocabulary lists them (ids follow the BPE vocab).
ENDOFTEXT = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD)

# DreamLite-mobile's templates (diffusers `DreamLiteMobilePipeline`), repeated here so the engine does
# not need the pipeline object to know them.
EDIT_TEMPLATE = (
    "<|im_start|>system\nDescribe the key features of the input image (color, shape, size, "
    "texture, objects, background), then explain how the user's text instruction should alter "
    "or modify the image. Generate a new image that meets the user's requirements while maintaining "
    "consistency with the original input where appropriate.<|im_end|>\n<|im_start|>user\n"
    "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n"
)
GENERATE_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, "
    "quantity, text, spatial relationships of the objects and background:<|im_end|>\n"
    "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
# Tokens before `<|vision_start|>` in the edit template / before the prompt in the generate template,
# with the real Qwen tokenizer and with this one (a test checks both agree with the pipeline's indices).
EDIT_PREFIX_TOKENS = 64
GENERATE_PREFIX_TOKENS = 34

# Same pre-tokenisation regex as Qwen2 (splits words, digits, punctuation runs, newlines).
PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

BPE_VOCAB_SIZE = 2048  # byte alphabet (256) + merges; special tokens come after

_CORPUS = """\
Make it look like a watercolor painting with soft edges and bright colors.
Turn the scene into a neon cyberpunk city at night, with rain and reflections.
Render the image as an oil painting in the style of the old masters.
Make it snowy. Add falling snow and a cold blue light over everything.
Turn the person into a marble statue standing in a museum hall.
Convert the photo to a pencil sketch on white paper with fine cross hatching.
Give the picture a warm golden sunset glow and long soft shadows.
Make the sky stormy and dark, with lightning over the mountains.
Transform the room into an underwater world full of fish and coral.
Apply a vintage film look: grain, faded colors and light leaks.
Paint the city in the style of a comic book with bold black outlines.
Make everything look like it is built from toy bricks and plastic.
Replace the background with a dense green forest in the morning fog.
Turn day into night and light the street with glowing lanterns.
A serene mountain lake at sunrise, mist over the water, pine trees on the shore.
A red fox sitting in tall grass, looking at the camera, shallow depth of field.
An old wooden boat on a quiet river, autumn leaves floating on the surface.
A futuristic train station with glass roofs, people walking, sunlight through the windows.
The dancer moves across the stage under a single white spotlight.
Abstract shapes of light pulse to the rhythm of the music on the big screen.
The camera follows the crowd as the lights change from purple to orange.
Keep the faces and the composition, only change the colors and the texture.
Make the lines thicker, the colors flatter and the shadows deeper.
Show the same view in winter, in spring, in summer and in autumn.
Describe what you see, then draw it again in a different style.
one two three four five six seven eight nine ten 0 1 2 3 4 5 6 7 8 9 100 2024 512x512
"""


def _training_corpus() -> list[str]:
    """Corpus lines; the templates' fixed text is repeated so each of its words becomes one token."""
    fixed = [EDIT_TEMPLATE.format(""), GENERATE_TEMPLATE.format("")]
    return fixed * 200 + _CORPUS.splitlines() * 20


@lru_cache(maxsize=1)
def _train_tokenizer_json() -> str:
    """Train the BPE once per process (deterministic: fixed corpus, no parallel randomness)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE
    from tokenizers.trainers import BpeTrainer

    tok = Tokenizer(BPE(unk_token=None, continuing_subword_prefix="", end_of_word_suffix="", fuse_unk=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        min_frequency=1,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    tok.train_from_iterator(_training_corpus(), trainer=trainer)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tok.to_str()


def build_tokenizer():
    """A `Qwen2Tokenizer` (fast, transformers 5) with the Qwen-VL special tokens; identical every call."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:  # transformers 5: Qwen2Tokenizer is the tokenizers-backed class
        from transformers import Qwen2Tokenizer as _Cls
    except ImportError:  # pragma: no cover - older transformers
        from transformers import Qwen2TokenizerFast as _Cls

    backend = Tokenizer.from_str(_train_tokenizer_json())
    kwargs = dict(
        tokenizer_object=backend,
        unk_token=None,
        bos_token=None,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        model_max_length=32768,
        errors="replace",
        clean_up_tokenization_spaces=False,
    )
    try:
        tokenizer = _Cls(**kwargs)
    except TypeError:  # pragma: no cover - a class that does not take tokenizer_object
        tokenizer = PreTrainedTokenizerFast(**kwargs)
    tokenizer.padding_side = "right"
    return tokenizer


def special_token_ids(tokenizer) -> dict[str, int]:
    """Ids of the Qwen-VL special tokens, named as Qwen3VLConfig names them."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids[IMAGE_PAD],
        "video_token_id": ids[VIDEO_PAD],
        "vision_start_token_id": ids[VISION_START],
        "vision_end_token_id": ids[VISION_END],
        "pad_token_id": ids[ENDOFTEXT],
    }
