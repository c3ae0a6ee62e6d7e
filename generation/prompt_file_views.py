"""The "LoRAs & embeddings" page: list, upload, delete, and the tag to copy into a prompt. The rules
(checks, names, privacy) are generation.prompt_files', which the API calls too."""
from __future__ import annotations

from django import forms
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.template.defaultfilters import filesizeformat
from django.views.decorators.http import require_GET, require_POST

from . import prompt_files
from .models import Embedding, Lora

KINDS: dict[str, type[Lora] | type[Embedding]] = {"lora": Lora, "embedding": Embedding}


class PromptFileUploadForm(forms.Form):
    file = forms.FileField(help_text="A .safetensors file.")
    name = forms.CharField(required=False, max_length=100, help_text="As written in prompts; blank: the file's name.")


def _kind(kind: str):
    if kind not in KINDS:
        raise Http404
    return KINDS[kind]


@login_required
@require_GET
def prompt_file_list(request: HttpRequest) -> HttpResponse:
    return _page(request, PromptFileUploadForm(prefix="lora"), PromptFileUploadForm(prefix="embedding"))


def _page(request: HttpRequest, lora_form, embedding_form, status: int = 200) -> HttpResponse:
    user = request.user
    context = {
        "loras": prompt_files.usable(Lora, user),
        "embeddings": prompt_files.usable(Embedding, user),
        "subjects": prompt_files.lora_subjects(user),
        "lora_form": lora_form,
        "embedding_form": embedding_form,
        "lora_limit": filesizeformat(prompt_files.max_bytes(Lora)),
        "embedding_limit": filesizeformat(prompt_files.max_bytes(Embedding)),
    }
    return render(request, "generation/prompt_files.html", context, status=status)


@login_required
@require_POST
def prompt_file_upload(request: HttpRequest, kind: str) -> HttpResponse:
    model = _kind(kind)
    form = PromptFileUploadForm(request.POST, request.FILES, prefix=kind)
    if form.is_valid():
        upload = prompt_files.upload_lora if model is Lora else prompt_files.upload_embedding
        try:
            row = upload(owner=request.user, file=form.cleaned_data["file"], name=form.cleaned_data["name"])
        except ValidationError as exc:
            for field, errors in exc.message_dict.items():
                form.add_error(field if field in form.fields else None, errors)
        else:
            usage = f"<lora:{row.name}:1>" if model is Lora else row.name
            messages.info(request, f"Uploaded {row.name}: write {usage} in a prompt to use it.")
            return redirect("prompt-files")
    blank = PromptFileUploadForm(prefix="embedding" if model is Lora else "lora")
    lora_form, embedding_form = (form, blank) if model is Lora else (blank, form)
    return _page(request, lora_form, embedding_form, status=400)


@login_required
@require_POST
def prompt_file_delete(request: HttpRequest, kind: str, pk: int) -> HttpResponse:
    row = get_object_or_404(prompt_files.owned(_kind(kind), request.user), pk=pk)
    prompt_files.delete_prompt_file(row)
    messages.info(request, f"Deleted {row.name}.")
    return redirect("prompt-files")
