"""Chaos driver for Lifeguard (run by scripts/chaos.sh, which sets the environment below).

For CHAOS_SECONDS, CHAOS_CLIENTS psycopg clients run transactions that insert numbered rows through a
transaction-mode Lifeguard, and CHAOS_RAW_CLIENTS raw-socket clients log in and walk away mid-message or
mid-transaction, while one chaos thread terminates random backends, restarts PostgreSQL (fast and
immediate), sends SIGHUP to Lifeguard and RELOAD through its admin console. Then it checks:

  lost      a transaction the client saw COMMIT succeed is missing from the table
  phantom   rows of a transaction the client saw fail (or abandoned, or never finished) are in the table
  partial   only some rows of one transaction are in the table
  crossed   a reply carried another client's/transaction's values, or a transaction moved between backends
  hang      a request got no answer for HANG_SECONDS
  statement an error names one of Lifeguard's shared statements (LIFEGUARD_<n>): its per-server cache
            disagrees with the server (PostgreSQL alone would not have failed that request)
  rss       Lifeguard's RSS at the end exceeds its start by more than CHAOS_RSS_SLACK_MB
  alive     Lifeguard died, or does not answer a query or its console at the end
  console   SHOW POOLS / SHOW CLIENTS still show clients or active servers after everyone left
  server    a backend of Lifeguard's left "idle in transaction", or more backends than the pool allows

Environment: LIFEGUARD_PORT, LIFEGUARD_SOCKET_DIR, LIFEGUARD_PID, LIFEGUARD_INI, PG_PORT, PG_DIR (the
pg-cluster.sh dir: socket in it, data in PG_DIR/data), PGBIN, CHAOS_SECONDS (60), CHAOS_CLIENTS (30),
CHAOS_RAW_CLIENTS (3), CHAOS_POOL_SIZES ("5,4": default_pool_size alternates between these on reloads),
CHAOS_RSS_SLACK_MB (20), CHAOS_SEED (random), CHAOS_ACTIONS_LOG (a file for the timeline of actions).
Prints a summary line and exits 1 when any invariant is broken.
"""
import collections
import datetime
import hashlib
import logging
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import traceback

import psycopg
from psycopg import pq

# psycopg logs a warning for every pipeline it abandons on a lost connection; those are expected here.
logging.getLogger("psycopg").setLevel(logging.ERROR)

LG_PORT = int(os.environ["LIFEGUARD_PORT"])
LG_SOCKET_DIR = os.environ["LIFEGUARD_SOCKET_DIR"]
LG_PID = int(os.environ["LIFEGUARD_PID"])
LG_INI = os.environ["LIFEGUARD_INI"]
PG_PORT = int(os.environ["PG_PORT"])
PG_DIR = os.environ["PG_DIR"]
PGBIN = os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin")
SECONDS = float(os.environ.get("CHAOS_SECONDS", "60"))
CLIENTS = int(os.environ.get("CHAOS_CLIENTS", "30"))
RAW_CLIENTS = int(os.environ.get("CHAOS_RAW_CLIENTS", "3"))
POOL_SIZES = [int(x) for x in os.environ.get("CHAOS_POOL_SIZES", "5,4").split(",")]
RSS_SLACK_MB = float(os.environ.get("CHAOS_RSS_SLACK_MB", "20"))
SEED = int(os.environ.get("CHAOS_SEED") or random.randrange(1 << 30))
ACTIONS_LOG = os.environ.get("CHAOS_ACTIONS_LOG")

USER, PASSWORD, DB = "lg_md5", "md5pass", "lgtest"
# A request without an answer for this long is a hang: PostgreSQL restarts take a few seconds, a failing
# server login is retried every server_login_retry (1 s here), so nothing legitimate waits this long.
HANG_SECONDS = 30
RAW_CLIENT_BASE = 100000          # raw clients' ids, so their rows cannot collide with psycopg clients'

COLS = "client, seq, k, pg_backend_pid(), txid_current()"
START = time.monotonic()
DEADLINE = START + SECONDS
stop = threading.Event()          # set at the deadline, or early when Lifeguard dies
lock = threading.Lock()
counts = collections.Counter()
errors = collections.Counter()    # error message (digits removed) -> count, to show what clients saw
error_examples = collections.defaultdict(list)
violations = []                   # (kind, detail)
actions = []                      # (utc time, text): the chaos timeline


def utc():
    """Wall time in the format of Lifeguard's log lines, to find the matching lines there."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + " UTC"


def count(key, n=1):
    with lock:
        counts[key] += n


def violation(kind, detail):
    line = f"{utc()} {detail}"
    with lock:
        violations.append((kind, line))
    print(f"chaos: VIOLATION {kind}: {line}", flush=True)


def action(text):
    with lock:
        actions.append((utc(), text))
    if ACTIONS_LOG:
        with open(ACTIONS_LOG, "a") as f:
            f.write(f"{actions[-1][0]} {text}\n")


def note_error(exc, where=""):
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    key = re.sub(r"\d+", "N", message)[:110]
    with lock:
        errors[key] += 1
        # The first few occurrences with who and when, to find the matching lines in Lifeguard's log.
        if where and len(error_examples[key]) < 3:
            error_examples[key].append(f"{utc()} {where}: {message}")


def check_statement_error(exc, where):
    """Lifeguard's own statement names (LIFEGUARD_<n>) in an error mean its idea of what a server has
    prepared differs from the server's: PostgreSQL alone would never have said that to this client."""
    if "LIFEGUARD_" in str(exc):
        violation("statement", f"{where}: {str(exc).strip()}")
        count("statement_errors")


def lifeguard_alive():
    try:
        os.kill(LG_PID, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by chaos.sh) still accepts kill(0).
    try:
        with open(f"/proc/{LG_PID}/status") as f:
            return not re.search(r"^State:\s+Z", f.read(), re.M)
    except FileNotFoundError:
        return False


def rss_kb():
    try:
        with open(f"/proc/{LG_PID}/status") as f:
            return int(re.search(r"^VmRSS:\s+(\d+)", f.read(), re.M).group(1))
    except (FileNotFoundError, AttributeError):
        return None


def lifeguard_dsn(unix):
    host = LG_SOCKET_DIR if unix else "127.0.0.1"
    return f"host={host} port={LG_PORT} user={USER} password={PASSWORD} dbname={DB} connect_timeout=5"


def postgres_connect():
    """A superuser connection straight to PostgreSQL (its Unix socket), not through Lifeguard."""
    return psycopg.connect(host=PG_DIR, port=PG_PORT, user="postgres", dbname=DB, autocommit=True,
                           connect_timeout=5)


def console(command, timeout=15):
    """Runs one admin console command with psql, as an operator would; returns (rows as dicts, error)."""
    env = dict(os.environ, PGPASSWORD=PASSWORD, PGCONNECT_TIMEOUT="5")
    try:
        out = subprocess.run(["psql", "-X", "-A", "-F", "\t", "-P", "footer=off", "-h", "127.0.0.1",
                              "-p", str(LG_PORT), "-U", USER, "-d", "pgbouncer", "-c", command],
                             env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"psql -c {command!r} got no answer in {timeout} s"
    if out.returncode != 0:
        return None, out.stderr.strip()
    lines = out.stdout.splitlines()
    if not lines:
        return [], None
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"))) for line in lines[1:]], None


# ---------------------------------------------------------------------------------------------------
# psycopg clients
# ---------------------------------------------------------------------------------------------------

class Crossed(Exception):
    """A reply that does not belong to this client's transaction; the connection is not trusted after."""


class Txn:
    def __init__(self, client, seq, rows, style, intent):
        self.client, self.seq, self.rows, self.style, self.intent = client, seq, rows, style, intent
        self.commit_sent = False    # once COMMIT (or an implicit-commit statement) left, failure = unknown
        self.outcome = None         # committed | failed | unknown
        self.pid = self.xid = None  # the backend and transaction id every reply must agree on

    def keys(self, ks=None):
        return [(self.client, self.seq, k) for k in (ks or range(1, self.rows + 1))]


INSERT_SQL = {n: "INSERT INTO chaos (client, seq, k) VALUES " + ", ".join(["(%s, %s, %s)"] * n)
              + f" RETURNING {COLS}" for n in (1, 2, 3)}
SELECT_SQL = "SELECT %s::int, %s::int, pg_backend_pid(), txid_current()"
STYLES = ["simple_script", "simple_steps", "extended", "prepared", "auto_prepare", "pipeline", "implicit"]


def connection_lost(conn, exc):
    """True when the error says the connection (or its server) is gone rather than a statement failed:
    then an in-flight COMMIT may or may not have happened."""
    if conn is None or conn.closed or conn.broken:
        return True
    state = getattr(exc, "sqlstate", None)
    return state is None or state[:2] in ("08", "57", "58", "XX")


class Worker(threading.Thread):
    def __init__(self, cid):
        super().__init__(name=f"client-{cid}", daemon=True)
        self.cid = cid
        self.rng = random.Random(SEED * 1000 + cid)
        self.conn = None
        self.local = "?"
        self.seq = 0
        self.txns = []
        self.busy_since = None      # monotonic time the current request was sent (for the hang watchdog)
        self.step = ""
        self.sock_fd = None

    # -- connection ---------------------------------------------------------------------------------
    def connect(self):
        unix = self.cid % 3 == 0
        self.step = "connect"
        self.busy_since = time.monotonic()
        try:
            self.conn = psycopg.connect(lifeguard_dsn(unix), autocommit=True)
        finally:
            self.busy_since = None
        self.sock_fd = self.conn.pgconn.socket
        if unix:
            self.local = "unix"
        else:
            # The client's port is what Lifeguard's log lines name (db/user@127.0.0.1:PORT).
            s = socket.socket(fileno=os.dup(self.sock_fd))
            self.local = f"127.0.0.1:{s.getsockname()[1]}"
            s.close()
        count("connects")

    def drop(self):
        if self.conn is not None:
            try:
                self.conn.close()
            except Exception:
                pass
        self.conn = None

    def run(self):
        while not stop.is_set() and time.monotonic() < DEADLINE:
            if self.conn is None or self.conn.closed or self.conn.broken:
                self.drop()
                try:
                    self.connect()
                except Exception as exc:
                    note_error(exc)
                    count("connect_errors")
                    # Lifeguard refuses logins while PostgreSQL restarts; keep trying, a little apart.
                    time.sleep(self.rng.uniform(0.05, 0.3))
                    continue
            self.transaction()
            if self.rng.random() < 0.02:     # some connection churn
                self.drop()
            time.sleep(self.rng.uniform(0, 0.01))
        self.drop()

    # -- one transaction ----------------------------------------------------------------------------
    def transaction(self):
        self.seq += 1
        style = self.rng.choice(STYLES)
        intent = self.rng.choices(["commit", "error", "rollback", "walk_away"], [85, 7, 6, 2])[0]
        if style in ("implicit", "simple_script", "pipeline") and intent == "walk_away":
            intent = "commit"
        if style == "implicit" and intent == "rollback":
            intent = "commit"
        txn = Txn(self.cid, self.seq, self.rng.randint(1, 3), style, intent)
        self.txns.append(txn)
        try:
            getattr(self, "run_" + style)(txn)
        except Crossed:
            # Whatever happened on this connection cannot be trusted: do not judge the transaction.
            txn.outcome = "unknown"
            self.drop()
        except psycopg.Error as exc:
            where = (f"client {self.cid} ({self.local}) seq {txn.seq} style {txn.style} intent {txn.intent} "
                     f"step {self.step} sqlstate {exc.sqlstate}")
            note_error(exc, where)
            check_statement_error(exc, where)
            lost = connection_lost(self.conn, exc)
            txn.outcome = "unknown" if (txn.commit_sent and lost) else "failed"
            if lost:
                self.drop()
            else:
                self.rollback()
        except Exception:
            violation("driver", f"client {self.cid} seq {txn.seq}: {traceback.format_exc()}")
            txn.outcome = "unknown"
            self.drop()
        finally:
            self.busy_since = None
        count(txn.outcome)
        count(f"{txn.outcome}:{style}")

    def rollback(self):
        try:
            if self.conn.info.transaction_status != pq.TransactionStatus.IDLE:
                self.step = "ROLLBACK after error"
                self.busy_since = time.monotonic()
                self.conn.execute("ROLLBACK")
        except psycopg.Error as exc:
            note_error(exc, f"client {self.cid} ({self.local}) seq {self.seq} step ROLLBACK after error")
            check_statement_error(exc, f"client {self.cid} ({self.local}) seq {self.seq} ROLLBACK after error")
            self.drop()
        finally:
            self.busy_since = None

    def execute(self, txn, what, sql, params=None, prepare=None):
        self.step = what
        self.busy_since = time.monotonic()
        cur = self.conn.execute(sql, params, prepare=prepare)
        self.busy_since = None
        return cur

    def fail(self, txn, what, detail):
        violation("crossed", f"client {self.cid} ({self.local}) seq {txn.seq} style {txn.style} "
                             f"step {what}: {detail}")
        count("crossed")
        raise Crossed()

    def check_rows(self, txn, what, rows, want_keys):
        """Rows are (client, seq, k, backend pid, txid) and must be this transaction's, on one backend."""
        got = sorted(tuple(r[:3]) for r in rows)
        if got != sorted(want_keys):
            self.fail(txn, what, f"expected rows {sorted(want_keys)}, got {rows}")
        for r in rows:
            self.check_backend(txn, what, r[3], r[4], rows)

    def check_backend(self, txn, what, pid, xid, rows):
        if txn.pid is None:
            txn.pid, txn.xid = pid, xid
        elif (pid, xid) != (txn.pid, txn.xid):
            self.fail(txn, what, f"transaction moved: backend/xid {txn.pid}/{txn.xid} then {pid}/{xid} "
                                 f"(reply {rows})")

    def check_status(self, txn, what, cur, want):
        if cur.statusmessage != want:
            self.fail(txn, what, f"expected command tag {want!r}, got {cur.statusmessage!r}")

    def maybe_pause(self):
        # Hold the server a moment inside the transaction now and then, so kills and restarts land there.
        if self.rng.random() < 0.2:
            time.sleep(self.rng.uniform(0, 0.005))

    def insert_groups(self, txn):
        """The keys to insert, as one multi-row INSERT or several; for intent 'error' the last group
        repeats key 1, so that statement fails with a unique violation."""
        ks = list(range(1, txn.rows + 1))
        if self.rng.random() < 0.5:
            groups = [ks]
        else:
            groups = [[k] for k in ks]
        if txn.intent == "error":
            groups.append([1])
        return groups

    def finish(self, txn, prepare=None):
        """COMMIT or ROLLBACK as a statement of its own; 'walk_away' closes the connection instead."""
        if txn.intent == "walk_away":
            # A client that leaves with its transaction open: Lifeguard must not let it commit.
            self.drop()
            txn.outcome = "failed"
            count("walked_away")
            return
        if txn.intent == "rollback":
            cur = self.execute(txn, "ROLLBACK", "ROLLBACK", prepare=prepare)
            self.check_status(txn, "ROLLBACK", cur, "ROLLBACK")
            txn.outcome = "failed"
            return
        txn.commit_sent = True
        cur = self.execute(txn, "COMMIT", "COMMIT", prepare=prepare)
        self.check_status(txn, "COMMIT", cur, "COMMIT")
        txn.outcome = "committed"

    def run_steps(self, txn, prepare, literal=False):
        begin = self.execute(txn, "BEGIN", "BEGIN", prepare=prepare)
        self.check_status(txn, "BEGIN", begin, "BEGIN")
        for ks in self.insert_groups(txn):
            self.maybe_pause()
            if literal:
                values = ", ".join(f"({txn.client}, {txn.seq}, {k})" for k in ks)
                cur = self.execute(txn, "INSERT", f"INSERT INTO chaos (client, seq, k) VALUES {values} "
                                                  f"RETURNING {COLS}")
            else:
                params = [v for k in ks for v in (txn.client, txn.seq, k)]
                cur = self.execute(txn, "INSERT", INSERT_SQL[len(ks)], params, prepare=prepare)
            self.check_rows(txn, "INSERT", cur.fetchall(), txn.keys(ks))
        self.maybe_pause()
        if literal:
            cur = self.execute(txn, "SELECT", f"SELECT {txn.client}, {txn.seq}, pg_backend_pid(), "
                                              f"txid_current()")
        else:
            cur = self.execute(txn, "SELECT", SELECT_SQL, (txn.client, txn.seq), prepare=prepare)
        row = cur.fetchone()
        if row is None or tuple(row[:2]) != (txn.client, txn.seq):
            self.fail(txn, "SELECT", f"expected ({txn.client}, {txn.seq}, ...), got {row}")
        self.check_backend(txn, "SELECT", row[2], row[3], row)
        self.finish(txn, prepare)

    def run_simple_steps(self, txn):
        self.run_steps(txn, prepare=False, literal=True)

    def run_extended(self, txn):
        self.run_steps(txn, prepare=False)

    def run_prepared(self, txn):
        self.run_steps(txn, prepare=True)

    def run_auto_prepare(self, txn):
        # psycopg prepares a query by itself after prepare_threshold (5) executions.
        self.run_steps(txn, prepare=None)

    def run_simple_script(self, txn):
        """The whole transaction in one simple Query message."""
        statements = ["BEGIN"]
        for ks in self.insert_groups(txn):
            values = ", ".join(f"({txn.client}, {txn.seq}, {k})" for k in ks)
            statements.append(f"INSERT INTO chaos (client, seq, k) VALUES {values} RETURNING {COLS}")
        statements.append(f"SELECT {txn.client}, {txn.seq}, pg_backend_pid(), txid_current()")
        end = "ROLLBACK" if txn.intent == "rollback" else "COMMIT"
        statements.append(end)
        txn.commit_sent = end == "COMMIT"
        cur = self.execute(txn, "script", "; ".join(statements))
        results = list(cur.results())
        if len(results) != len(statements):
            self.fail(txn, "script", f"{len(statements)} statements, {len(results)} results")
        inserted = []
        for i, statement in enumerate(statements):
            cur.set_result(i)
            if statement.startswith("INSERT"):
                inserted += cur.fetchall()
            elif statement.startswith("SELECT"):
                row = cur.fetchone()
                if row is None or tuple(row[:2]) != (txn.client, txn.seq):
                    self.fail(txn, "script SELECT", f"expected ({txn.client}, {txn.seq}, ...), got {row}")
                self.check_backend(txn, "script SELECT", row[2], row[3], row)
            else:
                self.check_status(txn, f"script {statement}", cur, statement)
        self.check_rows(txn, "script INSERT", inserted, txn.keys())
        txn.outcome = "committed" if end == "COMMIT" else "failed"

    def run_pipeline(self, txn):
        """BEGIN, the INSERTs, the SELECT and COMMIT sent as one pipeline, then read. After a ROLLBACK here
        psycopg 3 clears its statement cache and sends DEALLOCATE ALL only within the next execute, after
        that one's Parse: so DEALLOCATE ALL arrives pipelined between other Parse/Bind messages (and psycopg
        then Binds a name PostgreSQL itself would have dropped: "prepared statement did not exist" is
        psycopg's doing and not judged)."""
        prepare = self.rng.choice([None, False, True])
        self.step = "pipeline"
        self.busy_since = time.monotonic()
        with self.conn.pipeline() as p:
            begin = self.conn.execute("BEGIN", prepare=prepare)
            inserts = []
            for ks in self.insert_groups(txn):
                params = [v for k in ks for v in (txn.client, txn.seq, k)]
                inserts.append((ks, self.conn.execute(INSERT_SQL[len(ks)], params, prepare=prepare)))
            select = self.conn.execute(SELECT_SQL, (txn.client, txn.seq), prepare=prepare)
            end = "ROLLBACK" if txn.intent == "rollback" else "COMMIT"
            txn.commit_sent = end == "COMMIT"
            finish = self.conn.execute(end, prepare=prepare)
            p.sync()
        self.busy_since = None
        self.check_status(txn, "pipeline BEGIN", begin, "BEGIN")
        for ks, cur in inserts:
            self.check_rows(txn, "pipeline INSERT", cur.fetchall(), txn.keys(ks))
        row = select.fetchone()
        if row is None or tuple(row[:2]) != (txn.client, txn.seq):
            self.fail(txn, "pipeline SELECT", f"expected ({txn.client}, {txn.seq}, ...), got {row}")
        self.check_backend(txn, "pipeline SELECT", row[2], row[3], row)
        self.check_status(txn, f"pipeline {end}", finish, end)
        txn.outcome = "committed" if end == "COMMIT" else "failed"

    def run_implicit(self, txn):
        """One INSERT in autocommit: PostgreSQL commits it at Sync, so it is in flight from the start."""
        ks = list(range(1, txn.rows + 1)) + ([1] if txn.intent == "error" else [])
        params = [v for k in ks for v in (txn.client, txn.seq, k)]
        txn.commit_sent = True
        sql = "INSERT INTO chaos (client, seq, k) VALUES " + ", ".join(["(%s, %s, %s)"] * len(ks)) \
            + f" RETURNING {COLS}"
        cur = self.execute(txn, "INSERT", sql, params, prepare=self.rng.choice([None, False, True]))
        self.check_rows(txn, "INSERT", cur.fetchall(), txn.keys())
        txn.outcome = "committed"


# ---------------------------------------------------------------------------------------------------
# Raw-socket clients that walk away mid-message or mid-transaction
# ---------------------------------------------------------------------------------------------------

def msg(kind, body=b""):
    return kind + struct.pack("!i", len(body) + 4) + body


def cstr(text):
    return text.encode() + b"\0"


def bind(statement, params):
    body = cstr("") + cstr(statement) + struct.pack("!hh", 0, len(params))
    for p in params:
        data = str(p).encode()
        body += struct.pack("!i", len(data)) + data
    return msg(b"B", body + struct.pack("!h", 0))


def execute_msg():
    return msg(b"E", cstr("") + struct.pack("!i", 0))


RAW_INSERT = f"INSERT INTO chaos (client, seq, k) VALUES ($1, $2, $3) RETURNING {COLS}"


class RawFailed(Exception):
    pass


class RawClient(threading.Thread):
    """Speaks the protocol by hand so it can stop anywhere. Every row it tries to insert is recorded as
    'aborted' and must never reach the table."""

    def __init__(self, rid):
        super().__init__(name=f"raw-{rid}", daemon=True)
        self.rid = RAW_CLIENT_BASE + rid
        self.rng = random.Random(SEED * 1000 + self.rid)
        self.seq = 0
        self.txns = []
        self.sock = None
        self.buf = b""

    def connect(self):
        if self.rng.random() < 0.5:
            s = socket.socket(socket.AF_UNIX)
            s.settimeout(HANG_SECONDS)
            s.connect(os.path.join(LG_SOCKET_DIR, f".s.PGSQL.{LG_PORT}"))
        else:
            s = socket.create_connection(("127.0.0.1", LG_PORT), timeout=HANG_SECONDS)
        self.sock, self.buf = s, b""
        body = struct.pack("!i", 196608) + cstr("user") + cstr(USER) + cstr("database") + cstr(DB) + b"\0"
        s.sendall(struct.pack("!i", len(body) + 4) + body)
        while True:
            kind, data = self.read()
            if kind == b"R":
                code = struct.unpack("!i", data[:4])[0]
                if code == 5:     # md5: "md5" + md5(md5(password + user) + salt)
                    inner = hashlib.md5((PASSWORD + USER).encode()).hexdigest().encode()
                    s.sendall(msg(b"p", cstr("md5" + hashlib.md5(inner + data[4:8]).hexdigest())))
                elif code != 0:
                    raise RawFailed(f"unexpected authentication request {code}")
            elif kind == b"E":
                raise RawFailed(self.error_text(data))
            elif kind == b"Z":
                return

    def read(self):
        def need(n):
            while len(self.buf) < n:
                try:
                    chunk = self.sock.recv(65536)
                except socket.timeout:
                    raise TimeoutError()
                if not chunk:
                    raise RawFailed("connection closed by Lifeguard")
                self.buf += chunk
        need(5)
        kind, length = self.buf[:1], struct.unpack("!i", self.buf[1:5])[0]
        need(1 + length)
        data, self.buf = self.buf[5:1 + length], self.buf[1 + length:]
        return kind, data

    @staticmethod
    def error_text(data):
        fields = dict((f[:1], f[1:].decode(errors="replace")) for f in data.split(b"\0") if f)
        return f"{fields.get(b'S', '')} {fields.get(b'C', '')} {fields.get(b'M', '')}".strip()

    def read_until(self, last):
        """Reads replies until a message of kind `last`; returns them. An ErrorResponse ends it early."""
        got = []
        while True:
            kind, data = self.read()
            if kind == b"E":
                raise RawFailed(self.error_text(data))
            got.append((kind, data))
            if kind == last:
                return got

    def check_data_rows(self, replies, seq, what):
        for kind, data in replies:
            if kind == b"D":
                n = struct.unpack("!h", data[:2])[0]
                values, pos = [], 2
                for _ in range(n):
                    size = struct.unpack("!i", data[pos:pos + 4])[0]
                    values.append(data[pos + 4:pos + 4 + size].decode())
                    pos += 4 + size
                if values[:3] != [str(self.rid), str(seq), "1"]:
                    violation("crossed", f"raw client {self.rid} seq {seq} {what}: expected "
                                         f"({self.rid}, {seq}, 1, ...), got {values}")
                    count("crossed")

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
        self.sock = None

    def run(self):
        kinds = ["half_query", "half_bind", "open_txn", "ext_no_sync", "half_commit"]
        while not stop.is_set() and time.monotonic() < DEADLINE:
            kind = self.rng.choice(kinds)
            self.seq += 1
            seq = self.seq
            self.txns.append(Txn(self.rid, seq, 1, "raw_" + kind, "abort"))
            self.txns[-1].outcome = "aborted"
            try:
                self.connect()
                getattr(self, "abort_" + kind)(seq)
                count("aborted_mid_message")
                count(f"aborted:{kind}")
            except TimeoutError:
                violation("hang", f"raw client {self.rid} seq {seq} ({kind}) got no reply in {HANG_SECONDS} s")
                count("hangs")
            except (RawFailed, OSError) as exc:
                note_error(exc, f"raw client {self.rid} seq {seq} ({kind})")
                check_statement_error(exc, f"raw client {self.rid} seq {seq} ({kind})")
                count("raw_errors")
            finally:
                self.close()
            time.sleep(self.rng.uniform(0.02, 0.2))

    def cut_send(self, data):
        """Sends a strict prefix of data (possibly cutting the 5-byte header), then closes."""
        self.sock.sendall(data[:self.rng.randint(1, len(data) - 1)])
        time.sleep(self.rng.uniform(0, 0.02))
        self.close()

    def abort_half_query(self, seq):
        self.cut_send(msg(b"Q", cstr(f"INSERT INTO chaos (client, seq, k) VALUES ({self.rid}, {seq}, 1)")))

    def abort_half_bind(self, seq):
        if self.rng.random() < 0.5:
            # A named statement (shared by Lifeguard's prepared-statement support), then half a Bind of it.
            self.sock.sendall(msg(b"P", cstr("raw_ins") + cstr(RAW_INSERT) + struct.pack("!h", 0))
                              + msg(b"S"))
            self.read_until(b"Z")
            self.cut_send(bind("raw_ins", [self.rid, seq, 1]) + execute_msg() + msg(b"S"))
        else:
            parse = msg(b"P", cstr("") + cstr(RAW_INSERT) + struct.pack("!h", 0))
            b = bind("", [self.rid, seq, 1])
            cut = self.rng.randint(1, len(b) - 1)
            self.sock.sendall(parse + b[:cut])
            time.sleep(self.rng.uniform(0, 0.02))
            self.close()

    def begin_insert(self, seq):
        """BEGIN and an INSERT in one simple Query; waits until PostgreSQL reports the open transaction."""
        self.sock.sendall(msg(b"Q", cstr(f"BEGIN; INSERT INTO chaos (client, seq, k) VALUES "
                                         f"({self.rid}, {seq}, 1) RETURNING {COLS}")))
        replies = self.read_until(b"Z")
        self.check_data_rows(replies, seq, "BEGIN; INSERT")
        if replies[-1][1] != b"T":
            raise RawFailed(f"expected to be in a transaction, ReadyForQuery says {replies[-1][1]!r}")

    def abort_open_txn(self, seq):
        self.begin_insert(seq)
        if self.rng.random() < 0.5:
            self.sock.sendall(msg(b"X"))   # a polite Terminate still must not commit
        self.close()

    def abort_half_commit(self, seq):
        self.begin_insert(seq)
        self.cut_send(msg(b"Q", cstr("COMMIT")))

    def abort_ext_no_sync(self, seq):
        """Extended INSERT with Flush but no Sync: PostgreSQL has run it but commits only at Sync, which
        must never come from another client."""
        self.sock.sendall(msg(b"P", cstr("") + cstr(RAW_INSERT) + struct.pack("!h", 0))
                          + bind("", [self.rid, seq, 1]) + execute_msg() + msg(b"H"))
        replies = self.read_until(b"C")
        self.check_data_rows(replies, seq, "extended INSERT")
        time.sleep(self.rng.uniform(0, 0.02))
        self.close()


# ---------------------------------------------------------------------------------------------------
# Chaos actions, RSS sampling and the hang watchdog
# ---------------------------------------------------------------------------------------------------

def as_postgres(command):
    """pg_ctl refuses to run as root; run it as the cluster's owner like pg-cluster.sh does."""
    if os.geteuid() == 0:
        return ["su", "postgres", "-s", "/bin/bash", "-c", f"cd / && {command}"]
    return ["bash", "-c", command]


class Chaos(threading.Thread):
    def __init__(self):
        super().__init__(name="chaos", daemon=True)
        self.rng = random.Random(SEED)
        self.admin = None
        self.pool_size_index = 0
        self.max_backends = 0

    def run(self):
        try:
            self.loop()
        except Exception:
            violation("driver", "chaos thread crashed: " + traceback.format_exc())

    def loop(self):
        # Restarts at fixed points of the run (fast, immediate, fast); the rest on random timers.
        restarts = [(0.25, "fast"), (0.5, "immediate"), (0.75, "fast")]
        if SECONDS < 20:
            restarts = [(0.5, "immediate")]
        restarts = [(START + f * SECONDS, mode) for f, mode in restarts]
        next_kill = time.monotonic() + 1
        next_hup = time.monotonic() + self.rng.uniform(2, 5)
        next_reload = time.monotonic() + self.rng.uniform(2, 5)
        while not stop.is_set() and time.monotonic() < DEADLINE - 1:
            now = time.monotonic()
            if restarts and now >= restarts[0][0]:
                self.restart(restarts.pop(0)[1])
            if now >= next_kill:
                self.kill_backends()
                next_kill = time.monotonic() + self.rng.uniform(0.2, 0.8)
            if now >= next_hup:
                self.reload(sighup=True)
                next_hup = time.monotonic() + self.rng.uniform(3, 6)
            if now >= next_reload:
                self.reload(sighup=False)
                next_reload = time.monotonic() + self.rng.uniform(3, 6)
            time.sleep(0.05)
        if self.admin is not None:
            self.admin.close()

    def kill_backends(self):
        try:
            if self.admin is None or self.admin.closed or self.admin.broken:
                self.admin = postgres_connect()
            pids = [r[0] for r in self.admin.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' AND usename = %s "
                "AND pid <> pg_backend_pid()", (USER,)).fetchall()]
            self.max_backends = max(self.max_backends, len(pids))
            victims = self.rng.sample(pids, min(len(pids), self.rng.randint(1, 2)))
            for pid in victims:
                if self.admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()[0]:
                    count("backends_killed")
                    action(f"pg_terminate_backend({pid})")
        except psycopg.Error as exc:
            # PostgreSQL may be restarting; the next round reconnects.
            if self.admin is not None:
                self.admin.close()
            self.admin = None
            action(f"kill round failed: {exc}".strip())

    def restart(self, mode):
        if self.admin is not None:
            self.admin.close()
            self.admin = None
        action(f"pg_ctl restart -m {mode}: begin")
        data = os.path.join(PG_DIR, "data")
        cmd = f"{PGBIN}/pg_ctl -D '{data}' -l '{PG_DIR}/server.log' -m {mode} -w -t 60 restart >/dev/null"
        began = time.monotonic()
        out = subprocess.run(as_postgres(cmd), capture_output=True, text=True, timeout=90)
        if out.returncode != 0:
            violation("driver", f"pg_ctl restart -m {mode} failed: {out.stderr.strip()}")
        count("restarts")
        action(f"pg_ctl restart -m {mode}: done in {time.monotonic() - began:.1f} s")

    def reload(self, sighup):
        # Each reload has something to apply: default_pool_size alternates between CHAOS_POOL_SIZES.
        self.pool_size_index = (self.pool_size_index + 1) % len(POOL_SIZES)
        size = POOL_SIZES[self.pool_size_index]
        with open(LG_INI) as f:
            text = f.read()
        with open(LG_INI + ".tmp", "w") as f:
            f.write(re.sub(r"(?m)^default_pool_size = \d+$", f"default_pool_size = {size}", text))
        os.replace(LG_INI + ".tmp", LG_INI)
        if sighup:
            os.kill(LG_PID, signal.SIGHUP)
            action(f"SIGHUP (default_pool_size = {size})")
        else:
            _, err = console("RELOAD")
            if err:
                # The console must answer RELOAD whatever PostgreSQL is doing.
                violation("console", f"RELOAD failed: {err}")
            action(f"RELOAD (default_pool_size = {size})")
        count("reloads")
        count("sighups" if sighup else "console_reloads")


class Monitor(threading.Thread):
    """Samples Lifeguard's RSS, notices its death, and unblocks psycopg clients stuck past HANG_SECONDS."""

    def __init__(self, workers):
        super().__init__(name="monitor", daemon=True)
        self.workers = workers
        self.peak = 0
        self.samples = []       # (seconds since start, RSS kB)
        self.reported = set()

    def run(self):
        while not stop.is_set():
            rss = rss_kb()
            if rss is None or not lifeguard_alive():
                violation("alive", "Lifeguard exited during the run")
                stop.set()
                return
            self.peak = max(self.peak, rss)
            self.samples.append((time.monotonic() - START, rss))
            now = time.monotonic()
            for w in self.workers:
                since = w.busy_since
                if since is not None and now - since > HANG_SECONDS and (w.cid, w.seq) not in self.reported:
                    self.reported.add((w.cid, w.seq))
                    violation("hang", f"client {w.cid} ({w.local}) seq {w.seq} step {w.step}: no answer "
                                      f"for {now - since:.0f} s")
                    count("hangs")
                    try:
                        # Shut the socket down under psycopg so the thread gets an error and goes on.
                        s = socket.socket(fileno=os.dup(w.sock_fd))
                        s.shutdown(socket.SHUT_RDWR)
                        s.close()
                    except (OSError, TypeError):
                        pass
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------
# End of run checks
# ---------------------------------------------------------------------------------------------------

def wait_for(predicate, seconds):
    end = time.monotonic() + seconds
    while True:
        result = predicate()
        if result or time.monotonic() > end:
            return result
        time.sleep(0.25)


def check_alive():
    if not lifeguard_alive():
        violation("alive", "Lifeguard is not running at the end")
        return False
    last = [None]

    def query():
        try:
            with psycopg.connect(lifeguard_dsn(False), autocommit=True) as conn:
                return conn.execute("SELECT 42").fetchone()[0] == 42
        except psycopg.Error as exc:
            last[0] = exc
            return False
    # A failing server login is retried every server_login_retry, so allow a few seconds.
    if not wait_for(query, 15):
        violation("alive", f"Lifeguard does not answer SELECT at the end: {last[0]}")
        return False
    return True


def check_console():
    """Returns Lifeguard's SHOW POOLS row for the test database once it has settled (for the summary)."""
    problems = [None]
    last = [None]

    def settled():
        pools, err = console("SHOW POOLS")
        if err:
            problems[0] = f"SHOW POOLS failed: {err}"
            return False
        clients, err = console("SHOW CLIENTS")
        if err:
            problems[0] = f"SHOW CLIENTS failed: {err}"
            return False
        bad = [p for p in pools if p.get("database") == DB and
               any(p.get(c, "0") not in ("0", "") for c in ("cl_active", "cl_waiting", "sv_active",
                                                            "sv_being_canceled", "cl_active_cancel_req"))]
        left = [c for c in clients if c.get("database") != "pgbouncer"]
        last[0] = next((p for p in pools if p.get("database") == DB), None)
        if bad or left:
            problems[0] = f"SHOW POOLS: {bad}; SHOW CLIENTS (not console): {left}"
            return False
        return True
    if not wait_for(settled, 10):
        violation("console", f"not settled 10 s after the clients left: {problems[0]}")
    return last[0]


def check_servers():
    """Lifeguard's backends at the end: none inside a transaction, no more than the largest pool size."""
    try:
        with postgres_connect() as admin:
            def settled():
                rows = admin.execute("SELECT pid, state, left(query, 60) FROM pg_stat_activity WHERE "
                                     "backend_type = 'client backend' AND usename = %s", (USER,)).fetchall()
                return rows if all(r[1] == "idle" for r in rows) and len(rows) <= max(POOL_SIZES) else None
            if not wait_for(settled, 5):
                rows = admin.execute("SELECT pid, state, left(query, 60) FROM pg_stat_activity WHERE "
                                     "backend_type = 'client backend' AND usename = %s", (USER,)).fetchall()
                violation("server", f"Lifeguard's backends at the end: {rows}")
    except psycopg.Error as exc:
        violation("driver", f"cannot reach PostgreSQL at the end: {exc}")


def check_table(txns):
    """Compares what the clients saw with what is in the table."""
    with postgres_connect() as admin:
        present = {}
        for client, seq, n in admin.execute("SELECT client, seq, count(*) FROM chaos GROUP BY 1, 2"):
            present[(client, seq)] = n
    result = collections.Counter()
    known = set()
    for t in txns:
        key = (t.client, t.seq)
        known.add(key)
        n = present.get(key, 0)
        where = f"client {t.client} seq {t.seq} style {t.style} intent {t.intent}"
        if n not in (0, t.rows) and t.outcome in ("committed", "unknown"):
            violation("partial", f"{where} outcome {t.outcome}: {n} of {t.rows} rows in the table")
            result["partial"] += 1
        if t.outcome == "committed" and n != t.rows:
            if n == 0:
                violation("lost", f"{where}: COMMIT succeeded (backend {t.pid}) but no row is in the table")
            result["lost"] += 1
        elif t.outcome in ("failed", "aborted") and n:
            violation("phantom", f"{where} outcome {t.outcome} (backend {t.pid}): {n} rows in the table")
            result["phantom"] += 1
        elif t.outcome == "unknown":
            result["unknown_in_table" if n else "unknown_absent"] += 1
        elif t.outcome is None:
            result["unfinished"] += 1
    for key, n in present.items():
        if key not in known:
            violation("phantom", f"rows no client tried to insert: client {key[0]} seq {key[1]} ({n} rows)")
            result["phantom"] += 1
    return result


def main():
    print(f"chaos: {SECONDS:.0f} s, {CLIENTS} clients, {RAW_CLIENTS} raw clients, seed {SEED}", flush=True)
    rss_start = rss_kb()
    workers = [Worker(i + 1) for i in range(CLIENTS)]
    raws = [RawClient(i + 1) for i in range(RAW_CLIENTS)]
    chaos = Chaos()
    monitor = Monitor(workers)
    monitor.peak = rss_start or 0
    for t in [monitor, chaos] + workers + raws:
        t.start()
    for t in workers + raws + [chaos]:
        t.join(timeout=max(0.0, DEADLINE - time.monotonic()) + HANG_SECONDS + 100)
        if t.is_alive():
            violation("hang", f"thread {t.name} did not finish (step {getattr(t, 'step', '?')})")
    ran = time.monotonic() - START
    stop.set()
    monitor.join(timeout=5)

    pool = check_console() if check_alive() else None
    check_servers()
    # Let Lifeguard free what the departed clients held before reading its RSS.
    time.sleep(3)
    rss_end = rss_kb()
    txns = [t for w in workers + raws for t in w.txns]
    table = check_table(txns)

    mb = lambda kb: f"{kb / 1024:.1f}" if kb else "?"
    if rss_start and rss_end and rss_end > rss_start + RSS_SLACK_MB * 1024:
        violation("rss", f"RSS grew from {mb(rss_start)} MB to {mb(rss_end)} MB (peak {mb(monitor.peak)})")

    styles = collections.Counter()
    for key, n in counts.items():
        if ":" in key and key.split(":")[0] in ("committed", "failed", "unknown"):
            styles[key] = n
    print(f"chaos: ran {ran:.1f} s; {counts['connects']} connects ({counts['connect_errors']} refused), "
          f"{counts['walked_away']} walked away mid-transaction, {counts['sighups']} SIGHUP + "
          f"{counts['console_reloads']} RELOAD, at most {chaos.max_backends} backends seen")
    for style in STYLES:
        print(f"chaos:   {style:14} committed {styles['committed:' + style]:5}  failed "
              f"{styles['failed:' + style]:4}  unknown {styles['unknown:' + style]:3}")
    print("chaos:   raw aborts: " + ", ".join(f"{k.split(':')[1]} {n}" for k, n in sorted(counts.items())
                                            if k.startswith("aborted:")) + f"; raw errors {counts['raw_errors']}")
    if monitor.samples:
        # RSS at tenths of the run: a steady climb means a leak even when the end stays within the bound.
        marks = [monitor.samples[min(len(monitor.samples) - 1, i * len(monitor.samples) // 10)] for i in range(10)]
        print("chaos:   rss over the run (s: MB): " + ", ".join(f"{t:.0f}: {kb / 1024:.1f}" for t, kb in marks))
    if pool:
        print("chaos:   SHOW POOLS at the end: " + ", ".join(
            f"{c} {pool.get(c)}" for c in ("cl_active", "cl_waiting", "sv_active", "sv_idle", "sv_used",
                                          "sv_login", "maxwait") if c in pool))
    print(f"chaos:   unknown outcomes: {table['unknown_in_table']} committed, {table['unknown_absent']} not")
    print("chaos:   errors clients saw (most frequent first):")
    # With one example each (who and when), to find it in Lifeguard's log; CHAOS_VERBOSE=1 shows three.
    for message, n in errors.most_common(16):
        print(f"chaos:     {n:6}  {message}")
        for example in error_examples[message][:3 if os.environ.get("CHAOS_VERBOSE") else 1]:
            print(f"chaos:             e.g. {example}")
    kinds = collections.Counter(kind for kind, _ in violations)
    print(f"chaos: {counts['committed']} committed, {counts['failed']} failed, {counts['unknown']} unknown, "
          f"{counts['aborted_mid_message']} aborted mid-message, {counts['backends_killed']} backends killed, "
          f"{counts['restarts']} restarts, {counts['reloads']} reloads; lost {table['lost']}, "
          f"phantom {table['phantom']}, crossed {counts['crossed']}, hangs {counts['hangs']}, "
          f"statement errors {counts['statement_errors']}; "
          f"rss start/peak/end {mb(rss_start)}/{mb(max(monitor.peak, rss_end or 0))}/{mb(rss_end)} MB")
    if violations:
        print(f"chaos: FAILED: {dict(kinds)}")
        for kind, detail in violations[:40]:
            print(f"chaos:   {kind}: {detail}")
        if len(violations) > 40:
            print(f"chaos:   ... and {len(violations) - 40} more")
        return 1
    print("chaos: OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
