"""API views for subjects, their photos and training runs; they call training.services for every
change, so the pages and the API share one implementation. Other users' ids are 404."""
from __future__ import annotations


from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from django.http import Http404
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from api.job_fields import JobActions
from api.serializers import form_errors
from api.views import STATUS_PARAM, FileNegotiation, OwnedViewSetMixin, filter_by_id, filter_status, id_param, parse_id
from imagesite.conflicts import is_conflict
from imagesite.files import private_download, private_file_response

from . import serializers as ts
from . import services
from .checkpoint_names import named_for_tools
from .forms import PhotoUploadForm
from .models import Subject, SubjectPhoto, TrainingRun

PHOTO_PATH = r"photos/(?P<photo_id>[0-9]+)"


def _invalid(exc: ValidationError, field: str = "non_field_errors") -> Exception:
    """A service's refusal on `field`: a 400, or a 409 when it is about stored state (e.g. "already
    training"; imagesite.conflicts), which api.errors answers as such."""
    if is_conflict(exc) and not hasattr(exc, "error_dict"):
        return ValidationError({field: exc.error_list})
    return serializers.ValidationError({field: exc.messages})


@extend_schema_view(
    list=extend_schema(summary="List your subjects, newest first"),
    retrieve=extend_schema(summary="A subject: its state, photo count and latest training run"),
    destroy=extend_schema(summary="Delete a subject, its photos and checkpoints (images made with it stay)"),
)
class SubjectViewSet(OwnedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin, viewsets.GenericViewSet):
    serializer_class = ts.SubjectSerializer

    def get_queryset(self) -> QuerySet[Subject]:
        if self.is_schema_request():
            return Subject.objects.none()
        return Subject.objects.for_user(self.request.user).with_trained_run().prefetch_related("photos").order_by("-created_at", "-pk")

    @extend_schema(
        summary="Create a subject",
        request=ts.SubjectCreateSerializer,
        responses={201: ts.SubjectSerializer},
        examples=[OpenApiExample("A dog", value={"name": "Rex", "class_noun": "dog", "token": "sks"}, request_only=True)],
    )
    def create(self, request: Request) -> Response:
        serializer = ts.SubjectCreateSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        subject = services.create_subject(owner=request.user, **serializer.validated_data)
        data = self.get_serializer(subject).data
        return Response(data, status=status.HTTP_201_CREATED, headers={"Location": data["url"]})

    def perform_destroy(self, subject: Subject) -> None:
        services.delete_subject(subject=subject)

    # --- photos ------------------------------------------------------------------------------------
    @extend_schema(methods=["GET"], summary="The subject's photos, with their crops", responses=ts.SubjectPhotoSerializer(many=True))
    @extend_schema(
        methods=["POST"],
        summary="Upload photos (multipart, several at once)",
        description="Each file is judged on its own from its size, type and header (no decode): the good ones are stored "
        "and answered at once (202 with `accepted`, each photo `pending`, and `rejected`, each file with its reason). A worker "
        "then decodes, cleans and crops each pending photo: poll the photos until each is `ready` or `rejected` (with its "
        "`reason`). When none is accepted the answer is 400, `errors.photos` naming each file's reason; over the hourly "
        "upload limit, 429 and nothing is stored.",
        request={"multipart/form-data": ts.PhotoUploadSerializer},
        responses={202: ts.PhotoUploadResultSerializer},
    )
    @action(detail=True, methods=["get", "post"], parser_classes=[MultiPartParser, FormParser], pagination_class=None)
    def photos(self, request: Request, pk: str | None = None) -> Response:
        subject = self.get_object()
        if request.method == "GET":
            return Response(ts.SubjectPhotoSerializer(subject.photos.all(), many=True, context=self.get_serializer_context()).data)
        form = PhotoUploadForm(data={}, files=request.FILES)
        if not form.is_valid():
            raise serializers.ValidationError(form_errors(form))
        try:
            outcome = services.add_photos(subject=subject, files=form.cleaned_data["photos"])
        except ValidationError as exc:
            raise _invalid(exc, "photos")
        rejected = [{"name": name, "reason": reason} for name, reason in outcome.rejected]
        if not outcome.accepted:
            raise serializers.ValidationError({"photos": [f"{r['name']}: {r['reason']}" for r in rejected]})
        result = {"accepted": outcome.accepted, "rejected": rejected}
        return Response(ts.PhotoUploadResultSerializer(result, context=self.get_serializer_context()).data, status=status.HTTP_202_ACCEPTED)

    def _photo(self, photo_id: str) -> SubjectPhoto:
        subject = self.get_object()
        photo = subject.photos.filter(pk=parse_id(photo_id) or 0).first()
        if photo is None:
            raise Http404
        return photo

    def _ready_photo(self, photo_id: str) -> SubjectPhoto:
        photo = self._photo(photo_id)
        if not photo.is_ready:
            raise Http404("This photo is not ready (yet).")
        return photo

    @extend_schema(methods=["GET"], summary="One photo", responses=ts.SubjectPhotoSerializer)
    @extend_schema(methods=["PATCH"], summary="Caption a photo (not while the subject trains)", request=ts.PhotoCaptionSerializer, responses=ts.SubjectPhotoSerializer)
    @extend_schema(methods=["DELETE"], summary="Remove a photo (not while the subject trains)", responses={204: None})
    @action(detail=True, methods=["get", "patch", "delete"], url_path=PHOTO_PATH, url_name="photo")
    def photo(self, request: Request, pk: str | None = None, photo_id: str = "") -> Response:
        photo = self._photo(photo_id)
        if request.method == "GET":
            return Response(ts.SubjectPhotoSerializer(photo, context=self.get_serializer_context()).data)
        if request.method == "PATCH":
            given = ts.PhotoCaptionSerializer(data=request.data)
            given.is_valid(raise_exception=True)
            try:
                (photo,) = services.set_captions(subject=photo.subject, captions={photo.pk: given.validated_data["caption"]})
            except ValidationError as exc:
                raise _invalid(exc, "caption" if hasattr(exc, "error_dict") else "non_field_errors") from None
            return Response(ts.SubjectPhotoSerializer(photo, context=self.get_serializer_context()).data)
        try:
            services.remove_photo(photo=photo)
        except ValidationError as exc:
            raise _invalid(exc)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(summary="The cleaned photo (JPEG, metadata removed)", responses={(200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY)})
    @action(detail=True, methods=["get"], url_path=PHOTO_PATH + "/image", url_name="photo-image", content_negotiation_class=FileNegotiation)
    def photo_image(self, request: Request, pk: str | None = None, photo_id: str = ""):
        return private_file_response(self._ready_photo(photo_id).image, content_type="image/jpeg")

    @extend_schema(summary="The square crop training uses (PNG)", responses={(200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY)})
    @action(detail=True, methods=["get"], url_path=PHOTO_PATH + "/crop", url_name="photo-crop", content_negotiation_class=FileNegotiation)
    def photo_crop(self, request: Request, pk: str | None = None, photo_id: str = ""):
        return private_file_response(self._ready_photo(photo_id).crop)

    # --- training ---------------------------------------------------------------------------------
    @extend_schema(
        summary="Start training",
        description="Queues a DreamBooth run on the training worker; 202 with the run. Poll its `url` for progress and loss.",
        request=ts.TrainingStartSerializer,
        responses={202: ts.TrainingRunSerializer},
        examples=[
            OpenApiExample("The defaults", value={}, request_only=True),
            OpenApiExample("A short LoRA run", value={"steps": 200, "lora_rank": 4, "prior_preservation": False}, request_only=True),
        ],
    )
    @action(detail=True, methods=["post"])
    def train(self, request: Request, pk: str | None = None) -> Response:
        subject = self.get_object()
        serializer = ts.TrainingStartSerializer(data=request.data, context=self.get_serializer_context())
        serializer.is_valid(raise_exception=True)
        try:
            run = services.start_training(subject=subject, **serializer.validated_data)
        except ValidationError as exc:
            if hasattr(exc, "error_dict"):  # keyed by option or field: api.errors answers it so (400, or 409)
                raise
            raise _invalid(exc)
        data = ts.TrainingRunSerializer(run, context=self.get_serializer_context()).data
        return Response(data, status=status.HTTP_202_ACCEPTED, headers={"Location": data["url"]})


@extend_schema_view(
    list=extend_schema(summary="Your training runs, newest first", parameters=[STATUS_PARAM, id_param("subject", "Only this subject's runs.")]),
    retrieve=extend_schema(summary="A training run: status, phase, progress, loss and checkpoint"),
    cancel=extend_schema(summary="Cancel a queued or running training run", request=None, responses={200: ts.TrainingRunSerializer}),
    retry=extend_schema(summary="Queue a failed or canceled training run again", description="Afresh, within your queue cap (429 "
                        "past it); 409 when the run is not failed or canceled, or its subject is training.",
                        request=None, responses={200: ts.TrainingRunSerializer}),
)
class TrainingRunViewSet(JobActions, OwnedViewSetMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = ts.TrainingRunSerializer

    def get_queryset(self) -> QuerySet[TrainingRun]:
        if self.is_schema_request():
            return TrainingRun.objects.none()
        queryset = TrainingRun.objects.for_user(self.request.user).select_related("subject")
        if self.action == "list":
            queryset = filter_by_id(filter_status(queryset, self.request), self.request, "subject")
        return queryset.order_by("-created_at", "-pk")

    @extend_schema(
        summary="Download the checkpoint: the LoRA in kohya layout (<token>.safetensors, the token's embedding bundled; "
                "A1111/Forge/SD.Next/ComfyUI/InvokeAI load it), or a full fine-tune's UNet weights",
        responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY)},
    )
    @action(detail=True, methods=["get"], content_negotiation_class=FileNegotiation)
    def checkpoint(self, request: Request, pk: str | None = None):
        run = self.get_object()
        return private_download(named_for_tools(run.checkpoint_file(), run.subject.token))

    @extend_schema(
        summary="Download the learnt token embedding (textual-inversion .safetensors: emb_params, or clip_l/clip_g for SDXL; "
                "<token>-embedding.safetensors, for ComfyUI's models/embeddings), when the run trained one",
        responses={(200, "application/octet-stream"): OpenApiResponse(OpenApiTypes.BINARY)},
    )
    @action(detail=True, methods=["get"], url_path="token-embedding", content_negotiation_class=FileNegotiation)
    def token_embedding(self, request: Request, pk: str | None = None):
        run = self.get_object()
        return private_download(named_for_tools(run.token_embedding_file(), run.subject.token))
