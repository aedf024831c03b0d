#!/usr/bin/env python3
"""Writes the seed corpus of scripts/fuzz.sh: a few small inputs per target, in the layouts of Sources/LifeguardFuzz/Targets."""
import struct, os, sys
# Into the first argument, else next to this script. Run it again after changing an input layout.
root = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
def msg(i, body=b''): return i + struct.pack('>i', len(body) + 4) + body
def startup(params):
    body = struct.pack('>i', 196608) + b''.join(k + b'\0' + v + b'\0' for k, v in params) + b'\0'
    return struct.pack('>i', len(body) + 4) + body
def w(target, name, data):
    d = os.path.join(root, target); os.makedirs(d, exist_ok=True)
    open(os.path.join(d, name), 'wb').write(data)
bind_named = msg(b'B', b'\0stmt1\0' + b'\0\0' + b'\0\1' + struct.pack('>i', 3) + b'abc' + b'\0\0')
bind_unnamed = msg(b'B', b'\0\0\0\0\0\0\0\0')
parse = msg(b'P', b'stmt1\0SELECT $1::text\0\0\1\0\0\0\x19')
pipeline = parse + bind_named + msg(b'D', b'Pportal\0') + msg(b'E', b'\0\0\0\0\0') + msg(b'S')
query = msg(b'Q', b'SELECT 1;\0')
backend = msg(b'R', b'\0\0\0\0') + msg(b'S', b'client_encoding\0UTF8\0') + msg(b'K', b'\0\0\0\1\0\0\0\2') + msg(b'Z', b'I')
# frame-scanner: flags, seed, stream
w('frame-scanner', 'query-sync', b'\x01\x07' + query + msg(b'S'))
w('frame-scanner', 'extended-pipeline', b'\x05\x21' + pipeline)
w('frame-scanner', 'backend-login', b'\x02\x40' + backend)
w('frame-scanner', 'partial-copy', b'\x0c\x03' + msg(b'd', b'x' * 40)[:30])
# startup-packet: flags, seed, stream
w('startup-packet', 'psql', b'\x00\x11' + startup([(b'user', b'alice'), (b'database', b'app'), (b'application_name', b'psql'), (b'client_encoding', b'UTF8')]))
w('startup-packet', 'options', b'\x01\x05' + startup([(b'user', b'bob'), (b'options', b'-c DateStyle=ISO\\ ,\\ DMY --search_path=x'), (b'_pq_.x', b'1'), (b'extra_float_digits', b'3')]))
w('startup-packet', 'ssl-then-startup', b'\x00\x09' + struct.pack('>ii', 8, 80877103) + startup([(b'user', b'u')]))
w('startup-packet', 'cancel', b'\x00\x02' + struct.pack('>iiii', 16, 80877102, 1234, 5678))
# message-splitter: flags, seed, verdict count, verdicts, stream
w('message-splitter', 'pipeline', b'\x00\x13\x04\x00\x05\x03\x00' + pipeline + query + msg(b'X'))
w('message-splitter', 'bind-heads', b'\x00\x2a\x02\x05\x06' + bind_named + bind_unnamed + msg(b'B', b'p\0s2\0' + b'\0' * 300) + msg(b'S'))
w('message-splitter', 'all-whole', b'\x01\x09\x03\x03\x04\x07' + parse + msg(b'd', b'rows' * 10) + msg(b'c'))
# extended-query: flags, name field, repeats, length byte, message
w('extended-query', 'bind', b'\x01\x05LG_42\x01\x00' + bind_named)
w('extended-query', 'bind-long-name', b'\x81\x08abcdefgh\x10\x00\x03' + bind_named)
w('extended-query', 'bind-near-max-length', b'\x03\x04name\x02\x01' + bind_named)
w('extended-query', 'parse', b'\x00\x02s9\x01\x00' + parse)
w('extended-query', 'describe', b'\x00\x00\x00\x00' + msg(b'D', b'Sstmt1\0'))
w('extended-query', 'deallocate-all', b'\x00\x00\x00\x00' + msg(b'Q', b'deallocate  ALL;\0'))
w('extended-query', 'discard-all-unnamed-parse', b'\x00\x00\x00\x00' + msg(b'P', b'\0DISCARD ALL\0\0\0'))
# configuration: ini text; NUL separates %include'd parts
ini = b'''[databases]
app = host=127.0.0.1 port=5432 dbname=app pool_size=20 pool_mode=transaction
"odd name" = host=/tmp user='it''s' password='p w'
* = host=localhost

[users]
alice = pool_mode=session max_user_connections=3

[pgbouncer]
listen_addr = 127.0.0.1, ::1
listen_port = 6432
auth_type = scram-sha-256
auth_file = userlist.txt
pool_mode = transaction
max_client_conn = 200
default_pool_size = 10
max_prepared_statements = 100
server_reset_query = DISCARD ALL
ignore_startup_parameters = extra_float_digits, options
; comment
# comment
'''
w('configuration', 'pgbouncer.ini', ini)
w('configuration', 'include', b'[pgbouncer]\r\n%include "more.ini"\r\nlisten_port=6433\0query_timeout = 1.5\nserver_lifetime = 3600\n%include more.ini\0')
w('configuration', 'errors', b'\xef\xbb\xbf[pgbouncer\nkey\n[databases]\npgbouncer = host=x\n%foo\n')
# userlist
w('userlist', 'userlist.txt', b'"alice" "secret"\n"bob" "md53175bce1d3201d16594cebf9d7eb3f9d"\n; comment\n"carol" "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=" extra\n')
w('userlist', 'quotes', b'"we""ird" ""\r\n  "x"\t"y"\r"z" "w"x\n')
# admin-command
for name, text in [('show-pools', b'SHOW POOLS;'), ('set', b"SET default_pool_size = '40'"), ('set-to', b'set query_timeout to 5;'),
                   ('kill-client', b'KILL_CLIENT 12'), ('pause', b'pause "my db";'), ('select', b'select version')]:
    w('admin-command', name, text)
# scram: mode byte, then fields (one length byte each)
def f(b): return bytes([len(b)]) + b
cf = b'n,,n=,r=rOprNGfwEbeRWgbNEkqO'
sf = b'r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096'
cfin = b'c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ='
sfin = b'v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4='
nonce = bytes(range(18))
sasl_initial = b'SCRAM-SHA-256\0' + struct.pack('>i', len(cf)) + cf
w('scram', 'server-side', b'\x00' + f(b'pencil') + f(b'salt') + f(cf) + f(cfin) + nonce + f(b'') + f(sasl_initial) + f(cfin))
w('scram', 'server-side-md5', b'\xc0' + f(b'pencil') + f(b'salt') + f(cf) + f(cfin) + nonce + f(b'md53175bce1d3201d16594cebf9d7eb3f9d') + f(b'md5' + b'0' * 32 + b'\0'))
w('scram', 'client-side', b'\x01' + f(b'pencil') + bytes(64) + f(sf) + f(sfin) + nonce + f(b'pencil') + b'\x03' + f(b'SCRAM-SHA-256\0\0') + b'\x04' + f(b'r=x,s=QQ==,i=2'))
w('scram', 'client-side-password', b'\x13' + f(b'pencil') + bytes(64) + f(sf.replace(b'i=4096', b'i=3')) + f(sfin) + nonce)
w('scram', 'round-trip', b'\x02' + f(b'pencil') + f(b'salt') + nonce + nonce[::-1] + b'\x00\x00\x00')
w('scram', 'round-trip-altered', b'\x12' + f(b'pw') + f(b'NaCl') + nonce + nonce + b'\x03\x05\x20')
# session: flags, then ops (see SessionTarget.swift)
w('session', 'pipeline', bytes([0x00, 0, 1, 1, 0, 0, 2, 1, 0, 5, 0, 0, 6, 0, 0, 3, 200, 0, 5, 0, 0, 5, 0, 0, 5, 0, 0, 5, 0, 0, 5, 0, 0, 6, 0, 0, 6, 0, 0]))
w('session', 'query-txn', bytes([0x01, 0, 0, 1, 0, 0, 3, 30, 0, 5, 0x10, 0, 5, 0x10, 0, 6, 0, 0, 0, 6, 0, 0, 3, 5, 0, 5, 0, 0, 6, 0, 0, 6, 0, 0]))
w('session', 'split-bind', bytes([0x04, 0, 1, 2, 0, 0, 0, 2, 1, 0, 120, 0, 3, 3, 0, 3, 17, 0, 3, 250, 0, 5, 0, 0, 5, 0, 0]))
