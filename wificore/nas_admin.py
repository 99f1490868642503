"""wificore-admin's NAS edits: a NAS keeps its nas_id for life.

The nas_id is part of every session key of the NAS (rlm_wificore/records.py), of
its live-session set in Redis and of what Accounting-On/Off closes: a NAS that got
a new id on an edit split its open sessions into two rows, counted their usage
twice and left them open through an Accounting-On. So an edit updates the row in
place (``nas set``), and ``nas add --replace`` (what ``bin/stack up`` runs on every
start) updates the NAS it matches instead of deleting and inserting it.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

import psycopg

from . import roles
from .errors import InputError

if TYPE_CHECKING:
    from .admin import Admin


def check_ip_free(a: Admin, ip: str, tenant_id: int, nas_id: int | None) -> None:
    """The source address picks the tenant: unique in the whole deployment."""
    for shard in a.map:
        with psycopg.connect(shard.dsn) as conn:
            row = conn.execute("SELECT tenant_id, nas_id FROM nas WHERE ip = %s::inet", (ip,)).fetchone()
            if row and not (row[0] == tenant_id and row[1] == nas_id):
                raise InputError(f"ip: {ip} already belongs to a NAS of tenant {row[0]}")


def matching(conn: psycopg.Connection, tenant_id: int, ip: str | None, name: str | None) -> list[int]:
    """nas_ids of the tenant's NAS with that address or that name."""
    rows = conn.execute("SELECT nas_id FROM nas WHERE tenant_id = %s AND (ip = %s::inet OR name = %s) "
                        "ORDER BY nas_id", (tenant_id, ip, name)).fetchall()
    return [r[0] for r in rows]


def add(a: Admin, conn: psycopg.Connection, *, tenant_id: int, name: str, ip: str, secret: str, vendor: str,
        replace: bool, require_message_authenticator: bool = True, kind_check: str = "strict",
        coa_port: int = 3799) -> int:
    """Insert a NAS, or with ``replace`` update the one with that ip or name in place (same
    nas_id). Two different NAS matching (one by ip, one by name) is an error."""
    ids = matching(conn, tenant_id, ip, name) if replace else []
    if len(ids) > 1:
        raise InputError(f"ip/name: {ip} and {name!r} belong to two NAS ({ids[0]}, {ids[1]}); "
                         "edit them with `nas set`")
    check_ip_free(a, ip, tenant_id, ids[0] if ids else None)
    if ids:
        conn.execute("UPDATE nas SET name = %s, ip = %s::inet, secret = %s, vendor = %s, "
                     "require_message_authenticator = %s, kind_check = %s, coa_port = %s "
                     "WHERE tenant_id = %s AND nas_id = %s",
                     (name, ip, secret, vendor, require_message_authenticator, kind_check, coa_port,
                      tenant_id, ids[0]))
        return ids[0]
    from .admin import returned
    return int(returned(conn.execute(
        "INSERT INTO nas (tenant_id, name, ip, secret, vendor, require_message_authenticator, kind_check, "
        "coa_port) VALUES (%s, %s, %s, %s, %s, %s, %s, %s) RETURNING nas_id",
        (tenant_id, name, ip, secret, vendor, require_message_authenticator, kind_check, coa_port))))


def v_port(value: int, field: str = "coa_port") -> int:
    """A UDP port, 1..65535 (the NAS's CoA / Disconnect port, RFC 5176: 3799 by default)."""
    if not 1 <= value <= 65535:
        raise InputError(f"{field}: {value} is not a port (1..65535)")
    return value


def forget_cached(a: Admin, ips: list[str]) -> None:
    """Drop the NAS entries radiusd caches in Redis (60 s), so an edit applies at once."""
    if not a.redis_url:
        return
    import redis
    try:
        r = roles.client(a.redis_url, socket_timeout=2)
        r.delete(*(a.keys.nas(ip) for ip in ips))
        r.close()
    except redis.RedisError:
        pass  # the entry expires on its own within a minute


def cmd_nas_set(a: Admin, args: argparse.Namespace) -> None:
    """Change a NAS's secret, vendor, name, address, require_message_authenticator or
    kind_check in place: its nas_id stays."""
    from .admin import v_choice, v_ip
    from .profile import KIND_CHECKS
    from .vendors import VENDORS
    if (args.ip is None) == (args.name is None):
        raise InputError("nas: name it by exactly one of --ip or --name")
    ip = v_ip(args.ip, "ip") if args.ip is not None else None
    changes: dict[str, str | bool | int] = {}
    if args.secret is not None:
        if not 1 <= len(args.secret) <= 128:
            raise InputError("secret: must be 1..128 characters")
        changes["secret"] = args.secret
    if args.vendor is not None:
        changes["vendor"] = v_choice(args.vendor, "vendor", VENDORS)
    if args.new_name is not None:
        if not 1 <= len(args.new_name) <= 64:
            raise InputError("new_name: must be 1..64 characters")
        changes["name"] = args.new_name
    new_ip = v_ip(args.new_ip, "new_ip")
    if new_ip is not None:
        changes["ip"] = new_ip
    if args.require_message_authenticator is not None:
        # BlastRADIUS; radiusd keeps a dynamic client for its lifetime (clients.conf): the
        # change reaches a running radiusd when it looks the client up again.
        changes["require_message_authenticator"] = v_choice(
            args.require_message_authenticator, "require_message_authenticator", ("yes", "no")) == "yes"
    if args.kind_check is not None:
        # Like the flag above, it reaches a running radiusd with the client's next lookup.
        changes["kind_check"] = v_choice(args.kind_check, "kind_check", KIND_CHECKS)
    if args.coa_port is not None:
        # Read by the CoA sidecar from the NAS directory: no dynamic-client lookup needed.
        changes["coa_port"] = v_port(args.coa_port)
    if not changes:
        raise InputError("nas set: nothing to change (--secret, --vendor, --new-name, --new-ip, "
                         "--require-message-authenticator, --kind-check, --coa-port)")
    with a.connect(args.tenant) as conn:
        row = conn.execute("SELECT nas_id, host(ip) FROM nas WHERE tenant_id = %s AND "
                           + ("ip = %s::inet" if ip else "name = %s"), (args.tenant, ip or args.name)).fetchone()
        if row is None:
            raise InputError(f"nas: no NAS {ip or args.name!r} in tenant {args.tenant}")
        nas_id, old_ip = row
        if new_ip is not None:
            check_ip_free(a, new_ip, args.tenant, nas_id)
        if "name" in changes:
            other = conn.execute("SELECT nas_id FROM nas WHERE tenant_id = %s AND name = %s AND nas_id <> %s",
                                 (args.tenant, changes["name"], nas_id)).fetchone()
            if other:
                raise InputError(f"new_name: {changes['name']!r} already names NAS {other[0]} of tenant "
                                 f"{args.tenant}")
        cols = ", ".join(f"{c} = %s" + ("::inet" if c == "ip" else "") for c in changes)
        conn.execute(f"UPDATE nas SET {cols} WHERE tenant_id = %s AND nas_id = %s",  # noqa: S608 (fixed names)
                     (*changes.values(), args.tenant, nas_id))
    forget_cached(a, [old_ip] + ([new_ip] if new_ip is not None else []))
    print(f"nas {nas_id} updated ({', '.join(sorted(changes))}) in tenant {args.tenant}")


def add_set_parser(n: argparse._SubParsersAction) -> None:
    """`wificore-admin nas set` (wired into admin.py's parser)."""
    x = n.add_parser("set", help="change a NAS in place (its nas_id, hence its sessions, stay)")
    x.add_argument("--tenant", type=int, required=True)
    x.add_argument("--ip", help="the NAS with this address")
    x.add_argument("--name", help="the NAS with this name")
    x.add_argument("--secret")
    x.add_argument("--vendor")
    x.add_argument("--new-name", dest="new_name")
    x.add_argument("--new-ip", dest="new_ip")
    x.add_argument("--require-message-authenticator", metavar="yes|no")
    x.add_argument("--kind-check", metavar="strict|off",
                   help="strict: reject a login whose request is for the other subscriber kind "
                        "(wrong_service); off: never")
    x.add_argument("--coa-port", type=int, help="the NAS's CoA / Disconnect port (RFC 5176)")
    x.set_defaults(fn=cmd_nas_set)
