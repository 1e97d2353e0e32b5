"""The dialect layer: one query text, SQLite's ``:name`` and PostgreSQL's ``$n`` from it."""

from __future__ import annotations

from pns.store.sql import Sql


def test_named_parameters_become_numbered_in_first_use_order() -> None:
    query = Sql("UPDATE t SET a = :a, b = :b WHERE c = :c AND d <= :a")
    assert query.sqlite == "UPDATE t SET a = :a, b = :b WHERE c = :c AND d <= :a"
    assert query.pg == "UPDATE t SET a = $1, b = $2 WHERE c = $3 AND d <= $1"
    assert query.args({"c": 3, "a": 1, "b": 2, "unused": 9}) == [1, 2, 3]


def test_casts_and_literals_are_not_parameters() -> None:
    query = Sql("SELECT x::bigint FROM t WHERE s LIKE 'pns-aesgcm:%' AND k = :key")
    assert query.pg == "SELECT x::bigint FROM t WHERE s LIKE 'pns-aesgcm:%' AND k = $1"
    assert query.names == ("key",)


def test_the_skip_locked_slot_is_filled_per_dialect() -> None:
    query = Sql("DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT :n {skip_locked})")
    assert query.sqlite == "DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT :n )"
    assert query.pg == (
        "DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT $1 FOR UPDATE SKIP LOCKED)")


def test_a_list_parameter_is_a_table_in_both_dialects() -> None:
    query = Sql("SELECT x FROM numbers WHERE x IN {texts:xs} AND a NOT IN {ints:skip}")
    assert query.sqlite == ("SELECT x FROM numbers WHERE x IN (SELECT value AS item FROM "
                            "json_each(:xs)) AND a NOT IN (SELECT value AS item FROM "
                            "json_each(:skip))")
    assert query.pg == ("SELECT x FROM numbers WHERE x IN (SELECT unnest(CAST($1 AS text[])) "
                        "AS item) AND a NOT IN (SELECT unnest(CAST($2 AS bigint[])) AS item)")
    params = {"xs": ("1", "2"), "skip": [7]}
    assert query.args(params) == [["1", "2"], [7]]
    assert query.sqlite_params(params) == {"xs": '["1", "2"]', "skip": "[7]"}


def test_a_limited_subquery_runs_once_on_postgresql() -> None:
    query = Sql("DELETE FROM t WHERE id {in_once} SELECT id FROM t LIMIT :n {skip_locked} "
                "{end_once}")
    assert query.sqlite == "DELETE FROM t WHERE id IN (SELECT id FROM t LIMIT :n )"
    assert query.pg == ("DELETE FROM t WHERE id = ANY(ARRAY(SELECT id FROM t LIMIT $1 "
                        "FOR UPDATE SKIP LOCKED))")
