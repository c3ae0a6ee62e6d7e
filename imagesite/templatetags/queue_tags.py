"""`{% queue_words job %}`: where a queued job stands, as its page says it ("3 ahead of you, about 40 s"),
or why nothing moves (the operator paused the queue)."""
from __future__ import annotations

from django import template

from imagesite.queue import place_in_queue, queue_paused

register = template.Library()


@register.simple_tag
def queue_words(job) -> str:
    reason = queue_paused()
    if reason is not None:
        return f"the queue is paused: {reason}"
    place = place_in_queue(job)
    return place.words() if place is not None else "waiting for the worker…"
