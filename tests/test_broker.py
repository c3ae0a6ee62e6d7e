"""The ORM broker with a wake-up (imagesite/broker.py): claims like django-q2's, wakes on a commit.

The end-to-end worker tests run every job through it; these pin its two promises directly."""
from __future__ import annotations

import sqlite3
import threading
import time

import pytest
from django.db import connection
from django_q.brokers import get_broker
from django_q.conf import Conf

from imagesite.broker import WakefulORM

pytestmark = pytest.mark.django_db(transaction=True)  # the watch connection must see real commits


def test_the_cluster_uses_it():
    assert isinstance(get_broker("imagesite"), WakefulORM)


def test_each_task_is_claimed_once(monkeypatch):
    # A queue name of its own: a cluster another test of this process started and is still stopping
    # polls "imagesite" in the same database file and could take these tasks first.
    first, second = WakefulORM("broker-test-claims"), WakefulORM("broker-test-claims")
    ids = {first.enqueue("payload-1"), first.enqueue("payload-2")}
    (a,), (b,) = first.dequeue(), second.dequeue()  # Conf.BULK = 1: one task per look
    assert {a[0], b[0]} == ids and {a[1], b[1]} == {"payload-1", "payload-2"}
    monkeypatch.setattr(Conf, "POLL", 0.01)
    assert first.dequeue() is None and second.dequeue() is None  # both are locked by their claims


def test_an_idle_broker_wakes_on_another_connections_commit(monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 30.0)  # without the wake-up, dequeue would sleep 30 s
    broker = WakefulORM("imagesite")
    assert broker._data_version() is not None, "the test database is a SQLite file, so it can be watched"

    def commit_elsewhere():
        time.sleep(0.2)
        other = sqlite3.connect(connection.settings_dict["NAME"], timeout=5, isolation_level=None)
        other.execute("CREATE TABLE IF NOT EXISTS wake_probe (x INTEGER)")
        other.execute("INSERT INTO wake_probe VALUES (1)")
        other.close()

    writer = threading.Thread(target=commit_elsewhere)
    started = time.monotonic()
    writer.start()
    assert broker.dequeue() is None  # woke up, looked, found no task
    writer.join()
    assert time.monotonic() - started < 20, "dequeue waited out the poll instead of waking on the commit"


def test_without_a_watchable_database_it_sleeps_the_poll(monkeypatch):
    monkeypatch.setattr(Conf, "POLL", 0.05)
    broker = WakefulORM("imagesite")
    broker._watch = None  # as on PostgreSQL: nothing to watch
    assert broker._data_version() is None
    started = time.monotonic()
    assert broker.dequeue() is None
    assert time.monotonic() - started >= 0.05
