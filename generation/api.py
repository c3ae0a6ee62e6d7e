"""API views for generations, images and the model; every change goes through generation.services,
so the pages and the API share one implementation. Other users' ids are 404."""
from __future__ import annotations

import re
from datetime import date

from django.db.models import QuerySet
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from api.job_fields import JobActions
from api.pagination import NewestFirstCursorPagination
from api.views import STATUS_PARAM, FileNegotiation, OwnedViewSetMixin, filter_by_id, filter_status, id_param, parse_id
from imagesite.files import private_file_response

from . import catalog, rules
from . import serializers as s
from .modelinfo import SCHEDULERS
from .models import SCHEDULER_CHOICES, GeneratedImage, Generation, HiresUpscaler
from .png_settings import PngSettingsError, attach_subject, settings_from_png
from .services import create_generation, filter_by_words, filter_images
from .views import input_response, preview_response

SEARCH_PARAM = OpenApiParameter("search", str, description="Words the prompt contains: every word, in any order, ignoring case (\"quoted phrases\" stay whole).")


def search_prompt(queryset: QuerySet, request: Request, field: str = "prompt") -> QuerySet:
    return filter_by_words(queryset, request.query_params.get("search", ""), field=field)


# --- the base models ----------------------------------------------------------------------------
def model_description(row) -> dict:
    info = row.info()
    return {
        "id": row.pk,
        "name": row.name,
        "family": row.family,
        "family_label": row.family_label,
        "size_bytes": row.size_bytes,
        "is_default": row.is_default,
        "kind": info.kind,
        "native_size": info.native_size,
        "defaults": info.defaults(),
        "limits": {
            "min_size": info.min_size, "max_size": info.max_size, "size_multiple_of": 8,
            "steps": list(rules.STEPS_RANGE), "guidance_scale": list(rules.GUIDANCE_RANGE),
            "num_images": list(rules.NUM_IMAGES_RANGE), "max_prompt_chars": rules.MAX_PROMPT_CHARS,
        },
        "schedulers": [{"id": key, "label": choice.label} for key, choice in SCHEDULERS.items()],
        "example_prompts": list(info.example_prompts),
    }


class ModelsView(APIView):
    @extend_schema(
        summary="The base models offered: family, size on disk, defaults and limits (the default first)",
        description="Pass a model's `id` or `name` as `base_model` when creating a generation or starting a training run.",
        responses=s.ModelInfoSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        rows = catalog.offered_models().order_by("-is_default", "name")
        return Response(s.ModelInfoSerializer([model_description(row) for row in rows], many=True).data)


INPUT_RESPONSE = {(200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="A PNG once the worker has cleaned it "
                                                      "(metadata removed); before that, the upload as sent (PNG, JPEG or WebP).")}


# --- generations -----------------------------------------------------------------------------------
@extend_schema_view(
    list=extend_schema(summary="List your generations, newest first", parameters=[STATUS_PARAM, SEARCH_PARAM]),
    retrieve=extend_schema(summary="A generation: status, progress and its images when done"),
    destroy=extend_schema(summary="Delete a generation and its images (cancels it if it is still running)"),
    cancel=extend_schema(summary="Cancel a queued or running generation", request=None, responses={200: s.GenerationSerializer}),
    retry=extend_schema(summary="Queue a failed or canceled generation again", description="Afresh (error, progress and attempts "
                        "reset), within your queue cap (429 past it); 409 when the job is not failed or canceled.",
                        request=None, responses={200: s.GenerationSerializer}),
)
class GenerationViewSet(JobActions, OwnedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    serializer_class = s.GenerationSerializer
    pagination_class = NewestFirstCursorPagination  # keyset pages: as fast at 10,000 rows as at 100

    def get_queryset(self) -> QuerySet[Generation]:
        if self.is_schema_request():
            return Generation.objects.none()
        queryset = Generation.objects.for_user(self.request.user).prefetch_related("images")
        if self.action == "list":
            queryset = search_prompt(filter_status(queryset, self.request), self.request)
        return queryset.order_by("-created_at", "-pk")

    @extend_schema(
        summary="Queue a generation",
        description="Returns 202 with the queued job; poll its `url` until `status` is succeeded, failed or canceled.\n\n"
                    "img2img: send the input as `init_image` (multipart/form-data) or name one of your images as `source_image` "
                    "(JSON or multipart), with `strength`. Inpainting: add `mask` (multipart, the input's size; white is repainted) "
                    "and `mask_blur`. Hires fix (text-to-image): `hires_scale` > 1 with `hires_upscaler`, `hires_strength`, `hires_steps`. "
                    "Width and height, when omitted with an input, follow the input rounded to a multiple of 8. A refused request "
                    "(400, by field) stores nothing.",
        request={"application/json": s.GenerationJsonSerializer, "multipart/form-data": s.GenerationCreateSerializer},
        responses={202: s.GenerationSerializer},
        examples=[
            OpenApiExample("A prompt with the model's defaults", value={"prompt": "a red circle on a blue background"}, request_only=True),
            OpenApiExample(
                "The queued job",
                response_only=True,
                status_codes=["202"],
                value={
                    "id": 42, "url": "https://imagesite.example/api/v1/generations/42/",
                    "cancel_url": "https://imagesite.example/api/v1/generations/42/cancel/",
                    "page_url": "https://imagesite.example/generations/42/", "status": "queued",
                    "progress": {"step": 0, "total": 0, "percent": 0, "eta_seconds": None}, "error": "", "attempts": 0,
                    "prompt": "a red circle on a blue background", "negative_prompt": "", "seed": 1234567, "steps": 20,
                    "guidance_scale": 7.5, "width": 64, "height": 64, "scheduler": "dpmpp_2m", "num_images": 1,
                    "model_name": "imagesite-demo", "base_model": 1, "phase": "", "subject": None, "subject_name": "", "webhook_url": "",
                    "created_at": "2026-11-25T03:00:00Z", "started_at": None, "finished_at": None, "images": [], "preview_url": None,
                },
            ),
            OpenApiExample(
                "Every setting",
                value={"prompt": "a red circle on a blue background", "negative_prompt": "blurry", "seed": 42, "steps": 20,
                       "guidance_scale": 7.5, "width": 64, "height": 64, "scheduler": "dpmpp_2m", "num_images": 2,
                       "base_model": 1, "webhook_url": "https://example.com/hooks/imagesite"},
                request_only=True,
            ),
        ],
    )
    def create(self, request: Request) -> Response:
        serializer = s.GenerationCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        generation = self.perform_create(serializer)
        data = s.GenerationSerializer(generation, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})

    def perform_create(self, serializer) -> Generation:
        return create_generation(owner=self.request.user, **serializer.validated_data)

    def perform_destroy(self, instance: Generation) -> None:
        instance.cancel()  # a running worker sees the row canceled or gone and removes its files
        instance.delete()

    @extend_schema(summary="The job's input image (img2img/inpainting)", description="404 when the job has none.", responses=INPUT_RESPONSE)
    @action(detail=True, methods=["get"], url_path="input", url_name="input", content_negotiation_class=FileNegotiation)
    def input_image(self, request: Request, pk: str | None = None):
        return input_response(self.get_object().init_image, "This job has no input image.")

    @extend_schema(summary="The job's inpainting mask", description="404 when the job has none.", responses=INPUT_RESPONSE)
    @action(detail=True, methods=["get"], content_negotiation_class=FileNegotiation)
    def mask(self, request: Request, pk: str | None = None):
        return input_response(self.get_object().mask, "This job has no mask.")

    @extend_schema(
        summary="The live preview of a running generation",
        description="A small JPEG of the image so far (several images side by side), replaced every half second or so "
                    "while the job runs; 404 before the first one and once the job has ended. Follow `preview_url`.",
        responses={(200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY, description="The preview, not to be cached.")},
    )
    @action(detail=True, methods=["get"], content_negotiation_class=FileNegotiation)
    def preview(self, request: Request, pk: str | None = None):
        return preview_response(self.get_object())


# --- images ------------------------------------------------------------------------------------------
FILE_RESPONSE = {(200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="The PNG, with its settings in a `parameters` text chunk.")}


@extend_schema_view(
    list=extend_schema(
        summary="List your images, newest first",
        parameters=[SEARCH_PARAM, OpenApiParameter("favourite", bool, description="Only favourites (true) or only the others (false)."),
                    id_param("generation", "Only this generation's images."),
                    id_param("subject", "Only images made with this subject of yours."),
                    id_param("base_model", "Only images made with this base model (its id in /models/)."),
                    OpenApiParameter("created_from", OpenApiTypes.DATE, description="Only images made on this day (YYYY-MM-DD, UTC) or later."),
                    OpenApiParameter("created_to", OpenApiTypes.DATE, description="Only images made on this day (YYYY-MM-DD, UTC) or earlier."),
                    OpenApiParameter("training_sample", bool, description="Only training runs' validation images (true) or none of them "
                                     "(false); both when left out. Their `training_run` says which run drew them.")],
    ),
    retrieve=extend_schema(summary="An image with its settings and seed"),
    destroy=extend_schema(summary="Delete an image and its file"),
)
class ImageViewSet(OwnedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    serializer_class = s.ImageSerializer
    pagination_class = NewestFirstCursorPagination

    def get_queryset(self) -> QuerySet[GeneratedImage]:
        if self.is_schema_request():
            return GeneratedImage.objects.none()
        queryset = GeneratedImage.objects.for_user(self.request.user).select_related("generation")
        if self.action == "list":
            queryset = self._filter(search_prompt(queryset, self.request, "generation__prompt"))
        return queryset.order_by("-created_at", "-pk")

    def _filter(self, queryset: QuerySet) -> QuerySet:
        params = self.request.query_params
        if "favourite" in params:
            value = params["favourite"].lower()
            if value not in ("true", "false", "1", "0"):
                raise serializers.ValidationError({"favourite": ["Use true or false."]})
            queryset = queryset.filter(favourite=value in ("true", "1"))
        return filter_images(filter_by_id(queryset, self.request, "generation"), **image_filters(params))


    @extend_schema(summary="Download the PNG", responses=FILE_RESPONSE)
    @action(detail=True, methods=["get"], content_negotiation_class=FileNegotiation)
    def download(self, request: Request, pk: str | None = None):
        image = self.get_object()
        return private_file_response(image.file, download_name=image.download_name())

    @extend_schema(summary="The thumbnail PNG", responses=FILE_RESPONSE)
    @action(detail=True, methods=["get"], content_negotiation_class=FileNegotiation)
    def thumbnail(self, request: Request, pk: str | None = None):
        return private_file_response(self.get_object().thumbnail)

    @extend_schema(summary="Mark as favourite (POST) or not (DELETE)", request=None, responses={200: s.ImageSerializer})
    @action(detail=True, methods=["post", "delete"])
    def favourite(self, request: Request, pk: str | None = None) -> Response:
        image = self.get_object()
        image.favourite = request.method == "POST"
        image.save(update_fields=["favourite"])
        return Response(self.get_serializer(image).data)


def image_filters(params) -> dict:
    """services.filter_images' arguments from the list's query (a malformed one is a 400 on it; an
    end before the start is a well-formed query that finds nothing)."""
    errors, found = {}, {}
    for name in ("subject", "base_model"):
        if name in params:
            found[name] = parse_id(params[name])
            if found[name] is None:
                errors[name] = [f"A {name.replace('_', ' ')} id."]
    for name in ("created_from", "created_to"):
        if name in params:
            try:
                if not _ISO_DATE.fullmatch(params[name]):
                    raise ValueError
                found[name] = date.fromisoformat(params[name])
            except ValueError:
                errors[name] = ["A date as YYYY-MM-DD."]
    if "training_sample" in params:
        value = params["training_sample"].lower()
        if value not in ("true", "false", "1", "0"):
            errors["training_sample"] = ["Use true or false."]
        found["training_samples"] = value in ("true", "1")
    if errors:
        raise serializers.ValidationError(errors)
    return found


_ISO_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


# --- settings read back from a PNG ---------------------------------------------------------------
class PngUploadSerializer(serializers.Serializer):
    image = serializers.FileField(help_text="A PNG written by AUTOMATIC1111, ComfyUI, InvokeAI or imagesite (metadata is read; pixels are not decoded).")

    def validate_image(self, value):
        try:
            return settings_from_png(value)
        except PngSettingsError as error:
            raise serializers.ValidationError(str(error)) from error


class PngSettingsSerializer(serializers.Serializer):
    """The fields found; any of them may be missing. Send them on to `POST /generations/` as they are."""
    generator = serializers.CharField(help_text="The tool that wrote the file: AUTOMATIC1111 (imagesite writes this format too), ComfyUI, InvokeAI, ...")
    prompt = serializers.CharField(required=False, allow_blank=True)
    negative_prompt = serializers.CharField(required=False, allow_blank=True)
    seed = serializers.IntegerField(required=False)
    steps = serializers.IntegerField(required=False)
    guidance_scale = serializers.FloatField(required=False)
    width = serializers.IntegerField(required=False)
    height = serializers.IntegerField(required=False)
    scheduler = serializers.ChoiceField(choices=SCHEDULER_CHOICES, required=False)
    model = serializers.CharField(required=False, help_text="The checkpoint's name in the file (not necessarily a model offered here).")
    strength = serializers.FloatField(required=False, help_text="img2img/inpainting denoising strength (A1111's Denoising strength without hires fix).")
    mask_blur = serializers.IntegerField(required=False)
    hires_scale = serializers.FloatField(required=False)
    hires_upscaler = serializers.ChoiceField(choices=HiresUpscaler.choices, required=False)
    hires_strength = serializers.FloatField(required=False)
    hires_steps = serializers.IntegerField(required=False)
    subject_name = serializers.CharField(required=False, help_text="The subject the image was made with (imagesite's `Subject` key).")
    subject = serializers.IntegerField(required=False, help_text="Your own trained subject the file was made with (by its name, or by a "
                                       "`Lora hashes` token no tag of the prompt carries): send it on as `subject`. Absent when you have none; `notes` says so.")
    lora_hashes = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False,
                                        help_text="A1111's `Lora hashes`: {LoRA or subject token: short sha256}.")
    notes = serializers.ListField(child=serializers.CharField(), help_text="What the file says that could not be carried over.")


class PngInfoView(APIView):
    parser_classes = [MultiPartParser, FormParser]

    @extend_schema(
        summary="Read generation settings from a PNG's metadata",
        description="Multipart with the file in `image`. Nothing is stored. A JPEG, a PNG without metadata or a file over 32 MiB is a 400 on `image`.",
        request={"multipart/form-data": PngUploadSerializer},
        responses={200: PngSettingsSerializer, 400: OpenApiResponse(description="`image` is missing, not a PNG, or has no settings")},
    )
    def post(self, request: Request) -> Response:
        upload = PngUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        return Response(PngSettingsSerializer(attach_subject(upload.validated_data["image"], request.user)).data)
