"""Store I/O side by side: threads for an object store, whose reads wait on the network; one
after another for a local folder, whose small reads only take turns at the interpreter."""

from __future__ import annotations

import threading

from pipelines import storage


def test_items_of_an_object_store_go_side_by_side_and_local_ones_in_turn():
    here = threading.get_ident()

    def where(item: int) -> tuple[int, int]:
        return item, threading.get_ident()

    remote = storage.concurrently(where, range(40), url="s3://bucket/store")
    assert [item for item, _ in remote] == list(range(40))  # results in the items' order
    assert all(thread != here for _, thread in remote)
    for local in ("/store", "file:///store", "relative/store"):
        assert storage.concurrently(where, range(5), url=local) == [(i, here) for i in range(5)]
    assert all(thread != here for _, thread in storage.concurrently(where, range(3)))
