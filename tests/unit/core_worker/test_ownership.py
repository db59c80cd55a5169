"""The ownership table's counting, without any cluster."""

from __future__ import annotations

from aioray._private.core_worker.ownership import ObjectValue, OwnershipTable

ME = "127.0.0.1:1000"
OTHER = "127.0.0.1:2000"


def make() -> tuple[OwnershipTable, list]:
    released: list = []
    return OwnershipTable(ME, released.extend), released


def test_owned_object_is_released_when_every_count_is_zero() -> None:
    table, released = make()
    table.add_local(b"a", ME)
    table.set_value(b"a", ObjectValue(b"v"))
    table.add_submitted([(b"a", ME)])
    table.remove_local(b"a")
    assert not released, "a pending task still uses it"
    table.add_borrower([b"a"], OTHER)
    table.remove_submitted([b"a"])
    assert not released, "a borrower still holds it"
    table.remove_borrower([b"a"], OTHER)
    assert released == [(b"a", ME, ObjectValue(b"v"), True, False)]
    assert b"a" not in table


def test_inner_refs_live_as_long_as_their_container() -> None:
    table, released = make()
    table.add_local(b"inner", OTHER)
    table.add_local(b"outer", ME)
    table.set_value(b"outer", ObjectValue(b"v"), inner=((b"inner", OTHER),))
    table.remove_local(b"inner")
    assert not released
    table.remove_local(b"outer")
    assert [r[0] for r in released] == [b"outer", b"inner"]
    # The inner ref was borrowed but never registered with its owner: nothing to undo there.
    assert released[1][3:] == (False, False)


def test_borrow_registration_is_sent_once_and_undone_once() -> None:
    table, released = make()
    table.add_local(b"x", OTHER)
    table.note_deserialized(b"x", OTHER)
    table.add_local(b"x", OTHER)
    table.note_deserialized(b"x", OTHER)
    assert table.take_registrations() == {OTHER: [b"x"]}
    assert table.take_registrations() == {}
    table.remove_local(b"x")
    table.remove_local(b"x")
    assert released == [(b"x", OTHER, None, False, True)]


def test_unsent_registration_needs_no_removal() -> None:
    table, released = make()
    table.add_local(b"y", OTHER)
    table.note_deserialized(b"y", OTHER)
    table.remove_local(b"y")
    assert released == [(b"y", OTHER, None, False, False)]
    assert table.take_registrations() == {}


def test_result_for_a_dropped_object_is_refused() -> None:
    table, _ = make()
    assert not table.set_value(b"gone", ObjectValue(b"v"))
