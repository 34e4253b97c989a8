"""lockhold --inside FUNCTION on the real kernel, against the demo service's own books: its pool lock is
taken through argument-less wrappers (paired by thread) around a pthread mutex (paired by lock object),
and on every cache miss the holder calls getaddrinfo. The service is parked between requests while kit
attaches and before kit stops, so every call of the window is inside the probes' time."""

import os
import time

import pytest

from conftest import ACCURACY_BUDGET, KitProc
from workloads import paysvc

pytestmark = [pytest.mark.kernel]


@pytest.fixture(scope="module")
def pay_svc(tmp_path_factory):
    return paysvc.build(str(tmp_path_factory.mktemp("inside")), f"pin{os.getpid() % 100000}")


def measured(svc, *args, seconds=3.0):
    """(lockhold's result, the service's books over the same window)."""
    start = svc.pause()
    kit = KitProc("run", "lockhold", *ACCURACY_BUDGET, "--pid", str(svc.pid), *args, "--for", "60s", "--json")
    try:
        kit.wait_attached()
    finally:
        svc.resume()
    time.sleep(seconds)
    end = svc.pause()
    res = kit.stop().json()
    svc.resume()
    assert kit.code == 130, kit.stderr
    return res, paysvc.delta(end, start)


@pytest.mark.parametrize("pair", [
    ("--lock", "pool_lock", "--unlock", "pool_unlock"),  # the wrappers: no lock argument, paired by thread
    (),                                                   # pthread_mutex_lock/unlock: paired by the mutex
])
def test_the_resolver_called_inside_the_pool_lock_is_counted_as_the_service_counts_it(
        kernel, no_leftovers, pay_svc, pair):
    svc = paysvc.Service(pay_svc)
    try:
        res, books = measured(svc, *pair, "--inside", "getaddrinfo")
    finally:
        svc.stop()
    assert books["pool_misses"] >= 5, books
    inside = res["inside"]
    assert inside["function"] == "getaddrinfo" and inside["attached"]
    assert inside["inside"]["count"] == books["lookups"] == books["pool_misses"], (inside, books)
    assert inside["holds_with_calls"] == books["pool_misses"] and inside["outside"]["count"] == 0
    assert 0 < inside["inside"]["avg_us"] <= inside["inside"]["max_us"]
    holds = res["totals"]["hold"]["count"]
    if pair:
        assert holds == books["pool_holds"] and res["pairing"]["used"] == "thread"
    else:  # every mutex of the process: the pool's (inside pool_lock) and the ledger's
        assert holds == books["pool_holds"] + books["ledger_holds"] and res["pairing"]["rule"] == "lock"
    assert any(n.startswith(f"getaddrinfo was called {books['lookups']} times while a lock was held")
               for n in res["notes"]), res["notes"]


def test_a_function_called_only_outside_the_lock_counts_outside(kernel, no_leftovers, pay_svc):
    svc = paysvc.Service(pay_svc)
    try:
        res, books = measured(svc, "--lock", "pool_lock", "--unlock", "pool_unlock", "--inside", "query_db")
    finally:
        svc.stop()
    inside = res["inside"]
    assert inside["inside"]["count"] == 0 and inside["holds_with_calls"] == 0
    assert inside["outside"]["count"] == books["requests"] > 0, (inside, books)  # one query per request


def test_without_inside_nothing_more_is_attached(kernel, no_leftovers, pay_svc):
    svc = paysvc.Service(pay_svc)
    try:
        res, _books = measured(svc, "--lock", "pool_lock", "--unlock", "pool_unlock", seconds=1.0)
    finally:
        svc.stop()
    assert "inside" not in res
    assert sorted({u["symbol"] for u in res["uprobes"]}) == ["pool_lock", "pool_unlock"]
