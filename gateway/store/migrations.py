"""Versioned schema migrations for the SQLite store; ``PRAGMA user_version`` records the level reached.

Append a new script to :data:`MIGRATIONS` to change the schema; never edit one that has shipped.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: messages and lineage. Idempotent intake looks accepted messages up by
    # (control_id, sender, protocol); one index serves that and the control id search.
    # Message ids are ULIDs minted at receipt, so the primary key orders messages by time and
    # serves time-range queries; every further index costs pages in each commit.
    """
    CREATE TABLE messages (
        id            TEXT PRIMARY KEY,
        received_at   TEXT NOT NULL,
        protocol      TEXT NOT NULL,
        version       TEXT NOT NULL DEFAULT '',
        message_type  TEXT NOT NULL DEFAULT '',
        control_id    TEXT NOT NULL DEFAULT '',
        sender        TEXT NOT NULL DEFAULT '',
        receiver      TEXT NOT NULL DEFAULT '',
        status        TEXT NOT NULL,
        reply_code    TEXT NOT NULL DEFAULT '',
        listener      TEXT NOT NULL DEFAULT '',
        peer          TEXT NOT NULL DEFAULT '',
        client        TEXT NOT NULL DEFAULT '',
        raw           BLOB NOT NULL,
        raw_sha256    TEXT NOT NULL,
        headers       TEXT NOT NULL DEFAULT '{}',
        business_keys TEXT NOT NULL DEFAULT '{}',
        issues        TEXT NOT NULL DEFAULT '[]',
        parent_id     TEXT
    );
    CREATE INDEX messages_control_id ON messages (control_id, sender, protocol);
    CREATE INDEX messages_type ON messages (protocol, message_type);
    CREATE INDEX messages_parent ON messages (parent_id) WHERE parent_id IS NOT NULL;

    CREATE TABLE lineage (
        seq          INTEGER PRIMARY KEY,
        at           TEXT NOT NULL,
        event        TEXT NOT NULL,
        envelope_id  TEXT,
        parent_id    TEXT,
        actor        TEXT NOT NULL,
        outcome      TEXT NOT NULL DEFAULT '',
        error_code   TEXT NOT NULL DEFAULT '',
        raw_sha256   TEXT NOT NULL DEFAULT '',
        details      TEXT NOT NULL DEFAULT '{}',
        prev_hash    TEXT NOT NULL,
        hash         TEXT NOT NULL
    );
    CREATE INDEX lineage_envelope ON lineage (envelope_id);
    """,
]

MIGRATIONS.append(
    # 2: the outbox. One row per (message, sink): written in the intake transaction, worked off by the
    # delivery engine. ``seq`` keeps insertion order, which per-key ordering relies on.
    """
    ALTER TABLE messages ADD COLUMN route TEXT NOT NULL DEFAULT '';
    CREATE TABLE deliveries (
        seq              INTEGER PRIMARY KEY,
        id               TEXT NOT NULL UNIQUE,
        message_id       TEXT NOT NULL,
        sink             TEXT NOT NULL,
        route            TEXT NOT NULL,
        transform        TEXT,
        order_key        TEXT,
        status           TEXT NOT NULL,
        attempts         INTEGER NOT NULL DEFAULT 0,
        next_attempt_at  REAL NOT NULL,
        last_error_code  TEXT NOT NULL DEFAULT '',
        last_error       TEXT NOT NULL DEFAULT '',
        created_at       TEXT NOT NULL,
        updated_at       TEXT NOT NULL,
        delivered_at     TEXT
    );
    CREATE INDEX deliveries_due ON deliveries (sink, status, seq);
    CREATE INDEX deliveries_message ON deliveries (message_id);
    CREATE INDEX deliveries_key ON deliveries (sink, order_key, status, seq) WHERE order_key IS NOT NULL;
    """
)

MIGRATIONS.append(
    # 3: business keys by pseudonym, so lineage can be searched by patient, account or order without
    # holding their values: one row per (pseudonym, message).
    """
    CREATE TABLE message_keys (
        pseudonym   TEXT NOT NULL,
        message_id  TEXT NOT NULL,
        PRIMARY KEY (pseudonym, message_id)
    ) WITHOUT ROWID;
    """
)

MIGRATIONS.append(
    # 4: time-range reads of lineage (exports, audits); times grow with seq, so it appends at the right.
    "CREATE INDEX lineage_at ON lineage (at)"
)

MIGRATIONS.append(
    # 5: the inventory ledger. Every stock movement once, by its key (source + line + effect); the levels
    # per (SKU, location) they add up to, stamped with the seq of the last movement (the ledger version);
    # the level last pushed to each channel; the levels channels last reported, for reconciliation.
    """
    CREATE TABLE stock_movements (
        seq         INTEGER PRIMARY KEY,
        key         TEXT NOT NULL UNIQUE,
        message_id  TEXT,
        at          TEXT NOT NULL,
        location    TEXT NOT NULL,
        sku         TEXT NOT NULL,
        on_hand     INTEGER NOT NULL,
        reserved    INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        actor       TEXT NOT NULL
    );
    CREATE INDEX stock_movements_sku ON stock_movements (sku, seq);
    CREATE TABLE stock_levels (
        sku       TEXT NOT NULL,
        location  TEXT NOT NULL,
        on_hand   INTEGER NOT NULL,
        reserved  INTEGER NOT NULL,
        version   INTEGER NOT NULL,
        PRIMARY KEY (sku, location)
    ) WITHOUT ROWID;
    CREATE TABLE stock_pushes (
        channel    TEXT NOT NULL,
        sku        TEXT NOT NULL,
        available  INTEGER NOT NULL,
        version    INTEGER NOT NULL,
        pushed_at  TEXT NOT NULL,
        PRIMARY KEY (channel, sku)
    ) WITHOUT ROWID;
    CREATE TABLE stock_reports (
        channel     TEXT NOT NULL,
        location    TEXT NOT NULL,
        item        TEXT NOT NULL,
        sku         TEXT NOT NULL,
        available   INTEGER NOT NULL,
        message_id  TEXT,
        at          TEXT NOT NULL,
        PRIMARY KEY (channel, location, item)
    ) WITHOUT ROWID;
    """
)

MIGRATIONS.append(
    # 6: the digest that decides "the same message again" when the same content may come in other bytes
    # (a POSLog transaction posted alone, then inside the day's file); empty means raw_sha256 decides.
    "ALTER TABLE messages ADD COLUMN content_sha256 TEXT NOT NULL DEFAULT ''"
)

MIGRATIONS.append(
    # 7: how each message's body is kept: full, metadata (dropped once delivered: metadata:dropped) or
    # encrypted:<subject pseudonym> (sealed under that subject's data key, gateway/store/subjects.py).
    "ALTER TABLE messages ADD COLUMN storage TEXT NOT NULL DEFAULT 'full'"
)

MIGRATIONS.append(
    # 8: lineage search by receiver selects the messages of one receiving system.
    "CREATE INDEX messages_receiver ON messages (receiver)"
)

MIGRATIONS.append(
    # 9: a channel's own item ids for SKUs, learnt from its messages (Shopify products/update).
    """
    CREATE TABLE stock_items (
        channel  TEXT NOT NULL,
        sku      TEXT NOT NULL,
        item     TEXT NOT NULL,
        at       TEXT NOT NULL,
        PRIMARY KEY (channel, sku)
    ) WITHOUT ROWID;
    """
)

MIGRATIONS.append(
    # 10: the FHIR resource store behind /fhir. fhir_resources holds each resource's current version
    # (deleted ones as tombstones), fhir_versions every version for vread and history, and fhir_index
    # the search index rows of current versions, extracted when the version is written, so that a
    # search reads index pages instead of every resource. message_id is the envelope that wrote it.
    """
    CREATE TABLE fhir_resources (
        type          TEXT NOT NULL,
        id            TEXT NOT NULL,
        version       INTEGER NOT NULL,
        last_updated  TEXT NOT NULL,
        deleted       INTEGER NOT NULL DEFAULT 0,
        message_id    TEXT NOT NULL,
        body          BLOB NOT NULL,
        PRIMARY KEY (type, id)
    ) WITHOUT ROWID;
    CREATE INDEX fhir_resources_updated ON fhir_resources (type, last_updated);

    CREATE TABLE fhir_versions (
        type          TEXT NOT NULL,
        id            TEXT NOT NULL,
        version       INTEGER NOT NULL,
        last_updated  TEXT NOT NULL,
        method        TEXT NOT NULL,
        deleted       INTEGER NOT NULL DEFAULT 0,
        message_id    TEXT NOT NULL,
        body          BLOB NOT NULL,
        PRIMARY KEY (type, id, version)
    ) WITHOUT ROWID;
    CREATE INDEX fhir_versions_updated ON fhir_versions (last_updated);

    CREATE TABLE fhir_index (
        type    TEXT NOT NULL,
        param   TEXT NOT NULL,
        id      TEXT NOT NULL,
        system  TEXT NOT NULL DEFAULT '',
        value   TEXT NOT NULL DEFAULT '',
        exact   TEXT,
        low     TEXT,
        high    TEXT,
        num     REAL
    );
    CREATE INDEX fhir_index_value ON fhir_index (type, param, value, system, id);
    CREATE INDEX fhir_index_date ON fhir_index (type, param, low, high, id);
    CREATE INDEX fhir_index_num ON fhir_index (type, param, num, id) WHERE num IS NOT NULL;
    CREATE INDEX fhir_index_resource ON fhir_index (type, id, param);
    """
)

MIGRATIONS.append(
    # 11: the versions a message wrote, found by index: erasing a FHIR patient looks up every version its
    # writes made (adapters/fhir/erasure.py) inside the write transaction, which must not scan them all.
    "CREATE INDEX fhir_versions_message ON fhir_versions (message_id)"
)

MIGRATIONS.append(
    # 12: outbox order keys (``order_by: patient_id``) are kept as pseudonyms, as every other business key
    # outside the bodies is: only their equality orders deliveries.
    "UPDATE deliveries SET order_key = pseudonym(order_key) WHERE order_key IS NOT NULL AND order_key NOT LIKE 'hk:%'"
)

MIGRATIONS.append(
    # 13: lineage search by key finds the events that name a FHIR resource by its pseudonym
    # (``details.resource``: reads and writes, whichever message wrote the version); only those events
    # have an index row.
    "CREATE INDEX IF NOT EXISTS lineage_resource ON lineage (json_extract(details, '$.resource'))"
    " WHERE json_extract(details, '$.resource') IS NOT NULL"
)

MIGRATIONS.append(
    # 14: erasures whose subject key is still to be destroyed. An erasure commits its scrub, its dead letters,
    # its ``SubjectErased`` event and this row in one transaction, then deletes the key in subject-keys.db,
    # then this row: a row left by a crash in between is finished when the store is next opened, and while
    # it is here, bodies sealed under its subject read as erased. Subjects are pseudonyms.
    """
    CREATE TABLE pending_erasures (
        subject  TEXT PRIMARY KEY,
        at       TEXT NOT NULL
    ) WITHOUT ROWID;
    """
)
