"""Many threads share one adapter: enroll/classify/forget from 8 threads end in exactly the state a
serial replay of the same operations gives, and the saved store matches it."""

from __future__ import annotations

import random
import threading

import numpy as np

from edgemeta.runtime import FewShotAdapter, PrototypeStore

THREADS, OPS = 8, 500


def _plan(thread: int, images: int) -> list[tuple[str, str, list[int]]]:
    """One thread's operations on its own labels (so the serial replay is well defined)."""
    rng, known, ops = random.Random(thread), set(), []
    for _ in range(OPS):
        label = f"t{thread}-{rng.randrange(6)}"
        kind = rng.choices(["enroll", "classify", "forget"], [5, 4, 1])[0]
        if kind == "forget" and label not in known:
            kind = "enroll"
        if kind == "classify" and not known:
            kind = "enroll"
        if kind == "enroll":
            known.add(label)
        elif kind == "forget":
            known.discard(label)
        ops.append((kind, label, [rng.randrange(images) for _ in range(rng.randint(1, 3))]))
    return ops


def _apply(adapter: FewShotAdapter, op: tuple[str, str, list[int]], images: np.ndarray) -> None:
    kind, label, picks = op
    if kind == "enroll":
        adapter.enroll(label, [images[i] for i in picks])
    elif kind == "classify":
        assert len(adapter.classify([images[i] for i in picks])) == len(picks)
    else:
        adapter.forget(label)


def test_eight_threads_of_mixed_operations_equal_their_serial_replay(digits_run, tmp_path):
    images = digits_run["test"].raw[:64]
    plans = [_plan(t, len(images)) for t in range(THREADS)]
    shared = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"], state=tmp_path / "taught.store")
    errors: list[BaseException] = []
    start = threading.Barrier(THREADS)

    def work(plan):
        start.wait()
        try:
            for op in plan:
                _apply(shared, op, images)
        except BaseException as e:  # noqa: BLE001 - reported below with the thread's failure
            errors.append(e)

    threads = [threading.Thread(target=work, args=(plan,)) for plan in plans]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]

    serial = FewShotAdapter.from_bundle(digits_run["bundles"]["int8"])
    for plan in plans:
        for op in plan:
            _apply(serial, op, images)
    labels, protos = shared.prototypes()
    assert labels == serial.labels and len(labels) > 10
    assert [shared.shots(k) for k in labels] == [serial.shots(k) for k in labels]
    np.testing.assert_array_equal(protos, serial.prototypes()[1])
    saved = PrototypeStore.load(tmp_path / "taught.store")  # the last save is the final state too
    assert sorted(saved.labels) == labels
    np.testing.assert_array_equal(np.asarray(saved.prototypes()[1])[np.argsort(saved.labels)], protos)
