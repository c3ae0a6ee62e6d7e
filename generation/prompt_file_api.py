"""/api/v1/loras/ and /api/v1/embeddings/: the files a prompt names by `<lora:name:w>` or by an
embedding's word. Lists show your own and the shared ones; uploads are multipart; you delete only
your own (another user's private file is 404, a shared one is read-only). Rules: generation.prompt_files."""
from __future__ import annotations

from django.core.exceptions import ValidationError
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.exceptions import ValidationError as DrfValidationError
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.request import Request
from rest_framework.response import Response

from api.views import OwnedViewSetMixin

from . import prompt_files
from .models import Embedding, Lora


class _PromptFileSerializer(serializers.ModelSerializer):
    mine = serializers.SerializerMethodField(help_text="Whether you uploaded it (you may delete only your own).")

    def get_mine(self, row) -> bool:
        request = self.context.get("request")
        return request is not None and row.owner_id == request.user.pk


class LoraSerializer(_PromptFileSerializer):
    tag = serializers.SerializerMethodField(help_text="What to write in a prompt (weight 1; change it as you like).")

    class Meta:
        model = Lora
        fields = ("id", "name", "tag", "family", "layout", "size_bytes", "sha256", "shared", "mine", "uploaded_at")
        read_only_fields = fields

    def get_tag(self, row: Lora) -> str:
        return f"<lora:{row.name}:1>"


class EmbeddingSerializer(_PromptFileSerializer):
    class Meta:
        model = Embedding
        fields = ("id", "name", "family", "vectors", "size_bytes", "sha256", "shared", "mine", "uploaded_at")
        read_only_fields = fields


class PromptFileUploadSerializer(serializers.Serializer):
    file = serializers.FileField(help_text="The .safetensors file (checked from its header before it is stored).")
    name = serializers.CharField(required=False, allow_blank=True, max_length=100,
                                 help_text="As written in prompts: letters, digits, _ - . (blank: the file's name).")


def _upload_error(exc: ValidationError) -> DrfValidationError:
    return DrfValidationError({field: list(messages) for field, messages in exc.message_dict.items()})


class _PromptFileViewSet(OwnedViewSetMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, mixins.DestroyModelMixin,
                         viewsets.GenericViewSet):
    model: type = Lora
    parser_classes = [MultiPartParser, FormParser]

    def get_queryset(self) -> QuerySet:
        if self.is_schema_request():
            return self.model.objects.none()
        if self.action == "destroy":  # shared files of others are readable, never deletable
            return prompt_files.owned(self.model, self.request.user)
        return prompt_files.usable(self.model, self.request.user)

    def create(self, request: Request) -> Response:
        upload = PromptFileUploadSerializer(data=request.data)
        upload.is_valid(raise_exception=True)
        store = prompt_files.upload_lora if self.model is Lora else prompt_files.upload_embedding
        try:
            row = store(owner=request.user, file=upload.validated_data["file"], name=upload.validated_data.get("name", ""))
        except ValidationError as exc:
            raise _upload_error(exc) from None
        return Response(self.get_serializer(row).data, status=status.HTTP_201_CREATED)

    def perform_destroy(self, instance) -> None:
        prompt_files.delete_prompt_file(instance)


_UPLOAD_400 = OpenApiResponse(description="The file is not a usable .safetensors (bad header, unknown layout, other model family, too big) or the name is taken; nothing is stored.")


@extend_schema_view(
    list=extend_schema(summary="Your LoRAs and the shared ones, by name"),
    retrieve=extend_schema(summary="A LoRA"),
    create=extend_schema(summary="Upload a LoRA (kohya or diffusers layout, .safetensors)",
                         description="Multipart: `file`, optional `name`. Use it in prompts as `<lora:name:weight>`; "
                                     "`<lora:token:weight>` also finds your trained subjects' LoRAs.",
                         request={"multipart/form-data": PromptFileUploadSerializer}, responses={201: LoraSerializer, 400: _UPLOAD_400}),
    destroy=extend_schema(summary="Delete one of your LoRAs and its file"),
)
class LoraViewSet(_PromptFileViewSet):
    model = Lora
    serializer_class = LoraSerializer


@extend_schema_view(
    list=extend_schema(summary="Your textual-inversion embeddings and the shared ones, by name"),
    retrieve=extend_schema(summary="An embedding"),
    create=extend_schema(summary="Upload a textual-inversion embedding (.safetensors)",
                         description="Multipart: `file`, optional `name`. A word of the prompt equal to the name uses it.",
                         request={"multipart/form-data": PromptFileUploadSerializer}, responses={201: EmbeddingSerializer, 400: _UPLOAD_400}),
    destroy=extend_schema(summary="Delete one of your embeddings and its file"),
)
class EmbeddingViewSet(_PromptFileViewSet):
    model = Embedding
    serializer_class = EmbeddingSerializer
