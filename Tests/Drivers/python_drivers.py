"""Real Python drivers through Lifeguard in transaction mode: psycopg 3 and asyncpg with their default
settings, prepared statements and pipelines, while their transactions move between servers.

    LIFEGUARD_DSN=...  POSTGRES_DSN=...  python3 Tests/Drivers/python_drivers.py

LIFEGUARD_DSN reaches a transaction-mode Lifeguard; POSTGRES_DSN is a superuser connection straight to
PostgreSQL, used to terminate Lifeguard's backends so the next transaction certainly runs on a new server.
Prints one line per check and exits non-zero when any fails.
"""
import asyncio
import os
import sys
import time
import traceback

import asyncpg
import psycopg

LIFEGUARD_DSN = os.environ["LIFEGUARD_DSN"]
POSTGRES_DSN = os.environ["POSTGRES_DSN"]
failures = []


def asyncpg_connect():
    """asyncpg takes URLs or keywords, not libpq's key=value strings."""
    settings = psycopg.conninfo.conninfo_to_dict(LIFEGUARD_DSN)
    return asyncpg.connect(host=settings["host"], port=int(settings["port"]), user=settings["user"],
                           password=settings.get("password"), database=settings["dbname"])


def terminate_backends():
    """Ends every backend Lifeguard holds for the test database (idle ones are simply replaced), and waits
    until they are gone, so Lifeguard has their FATAL and EOF before the next query."""
    settings = psycopg.conninfo.conninfo_to_dict(LIFEGUARD_DSN)
    mine = "FROM pg_stat_activity WHERE usename = %s AND datname = %s"
    with psycopg.connect(POSTGRES_DSN, autocommit=True) as admin:
        admin.execute(f"SELECT pg_terminate_backend(pid) {mine}", (settings["user"], settings["dbname"]))
        for _ in range(100):
            if admin.execute(f"SELECT count(*) {mine}", (settings["user"], settings["dbname"])).fetchone()[0] == 0:
                break
            time.sleep(0.05)
    time.sleep(0.1)


def check(name):
    def wrap(function):
        try:
            result = function()
            if asyncio.iscoroutine(result):
                asyncio.run(result)
            print(f"ok   {name}")
        except Exception:
            failures.append(name)
            print(f"FAIL {name}")
            traceback.print_exc()
        return function
    return wrap


@check("psycopg: prepare=True keeps working on new servers")
def _():
    with psycopg.connect(LIFEGUARD_DSN, autocommit=True) as conn:
        for round in range(3):
            for value in range(8):
                row = conn.execute("SELECT %s::int * 2", (value,), prepare=True).fetchone()
                assert row[0] == value * 2, row
            terminate_backends()


@check("psycopg: automatic preparation after prepare_threshold executions")
def _():
    with psycopg.connect(LIFEGUARD_DSN, autocommit=True) as conn:
        assert conn.prepare_threshold == 5
        for value in range(20):
            if value == 9:
                terminate_backends()
            assert conn.execute("SELECT %s::text || 'x'", (str(value),)).fetchone()[0] == f"{value}x"


@check("psycopg: transactions with prepared statements")
def _():
    with psycopg.connect(LIFEGUARD_DSN) as conn:
        for value in range(10):
            with conn.transaction():
                conn.execute("CREATE TEMP TABLE IF NOT EXISTS t (v int) ON COMMIT DROP")
                conn.execute("INSERT INTO t VALUES (%s)", (value,), prepare=True)
                assert conn.execute("SELECT sum(v) FROM t", prepare=True).fetchone()[0] == value
            conn.commit()


@check("psycopg: pipeline mode, with an error in the middle")
def _():
    with psycopg.connect(LIFEGUARD_DSN, autocommit=True) as conn:
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int + 1", (value,), prepare=True) for value in range(50)]
        assert [cursor.fetchone()[0] for cursor in cursors] == list(range(1, 51))
        try:
            with conn.pipeline():
                conn.execute("SELECT 1")
                conn.execute("SELECT 1/0")
                conn.execute("SELECT 2")
            raise AssertionError("the division by zero was not reported")
        except psycopg.errors.DivisionByZero:
            pass
        terminate_backends()
        with conn.pipeline():
            cursor = conn.execute("SELECT %s::int + 1", (41,), prepare=True)
        assert cursor.fetchone()[0] == 42


@check("psycopg: SET of reported parameters follows the client")
def _():
    with psycopg.connect(LIFEGUARD_DSN, autocommit=True) as conn:
        conn.execute("SET DateStyle = 'SQL, DMY'")
        conn.execute("SET IntervalStyle = 'postgres_verbose'")
        terminate_backends()
        assert conn.execute("SHOW DateStyle").fetchone()[0] == "SQL, DMY"
        assert conn.execute("SHOW IntervalStyle").fetchone()[0] == "postgres_verbose"


@check("asyncpg: default statement cache on new servers")
async def _():
    conn = await asyncpg_connect()
    try:
        for round in range(3):
            for value in range(10):
                assert await conn.fetchval("SELECT $1::int + 100", value) == value + 100
            terminate_backends()
    finally:
        await conn.close()


@check("asyncpg: explicit prepared statements, executemany and transactions")
async def _():
    conn = await asyncpg_connect()
    try:
        statement = await conn.prepare("SELECT $1::text || '!'")
        assert await statement.fetchval("a") == "a!"
        terminate_backends()
        assert await statement.fetchval("b") == "b!"
        async with conn.transaction():
            await conn.execute("CREATE TEMP TABLE m (v int) ON COMMIT DROP")
            await conn.executemany("INSERT INTO m VALUES ($1)", [(value,) for value in range(100)])
            assert await conn.fetchval("SELECT count(*) FROM m") == 100
    finally:
        await conn.close()


@check("asyncpg: many connections sharing a small pool")
async def _():
    connections = [await asyncpg_connect() for _ in range(20)]
    try:
        async def work(conn, index):
            for value in range(20):
                assert await conn.fetchval("SELECT $1::int * $2::int", value, index) == value * index
        await asyncio.gather(*(work(conn, index) for index, conn in enumerate(connections)))
    finally:
        for conn in connections:
            await conn.close()


if failures:
    print(f"{len(failures)} driver check(s) failed")
    sys.exit(1)
print("all driver checks passed")
