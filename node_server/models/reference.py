"""The stock diffusers `DreamLiteMobilePipeline` built around a bundle: the baseline our engine must match.

Used by tests and baselines only. The stock `Qwen3VLProcessor` insists on a video processor, whose
real class needs torchvision; images never touch it, so a stand-in satisfies the constructor.
"""

from __future__ import annotations

from .bundle import DreamLiteBundle

# Keys of our image-processor dict that the transformers image processor accepts.
_IMAGE_PROCESSOR_KWARGS = (
    "do_resize", "do_rescale", "rescale_factor", "do_normalize", "do_convert_rgb",
    "patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "size",
)


def _stand_in_video_processor(image_processor: dict):
    """A `VideoProcessorMixin` instance that carries the patch settings and refuses to process videos."""
    from transformers.video_processing_utils import VideoProcessorMixin

    class _NoVideoProcessor(VideoProcessorMixin):
        """Stand-in: the pipeline sends images only; videos would need torchvision."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)

        def preprocess(self, videos, **kwargs):
            raise NotImplementedError("videos are not supported by the reference pipeline (needs torchvision)")

    return _NoVideoProcessor(
        patch_size=image_processor["patch_size"],
        temporal_patch_size=image_processor["temporal_patch_size"],
        merge_size=image_processor["merge_size"],
    )


def build_image_processor(image_processor: dict, **overrides):
    """The stock PIL Qwen2-VL image processor (no torchvision) configured from a bundle's dict."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    kwargs = {k: image_processor[k] for k in _IMAGE_PROCESSOR_KWARGS if k in image_processor}
    kwargs.update(overrides)
    return Qwen2VLImageProcessorPil(**kwargs)


def build_reference_processor(bundle: DreamLiteBundle):
    """The stock `Qwen3VLProcessor` (image processor + tokenizer + stand-in video processor)."""
    from transformers import Qwen3VLProcessor

    stand_in = _stand_in_video_processor(bundle.image_processor)

    class _ReferenceQwen3VLProcessor(Qwen3VLProcessor):
        """Stock processor; only its constructor's class check is relaxed for the stand-in.

        Without torchvision, transformers hides `VideoProcessorMixin` from its top-level namespace,
        so the stock check cannot even look the expected class up.
        """

        def check_argument_for_proper_class(self, argument_name, argument):
            if argument_name == "video_processor" and argument is stand_in:
                return type(argument)
            return super().check_argument_for_proper_class(argument_name, argument)

    return _ReferenceQwen3VLProcessor(
        image_processor=build_image_processor(bundle.image_processor),
        tokenizer=bundle.tokenizer,
        video_processor=stand_in,
    )


def build_reference_pipeline(bundle: DreamLiteBundle):
    """diffusers' stock `DreamLiteMobilePipeline` sharing the bundle's modules (no copies)."""
    from diffusers import DreamLiteMobilePipeline

    return DreamLiteMobilePipeline(
        text_encoder=bundle.text_encoder,
        tokenizer=bundle.tokenizer,
        processor=build_reference_processor(bundle),
        vae=bundle.vae,
        unet=bundle.unet,
        scheduler=bundle.scheduler,
    )
