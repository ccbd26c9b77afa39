-- The outbox's mutation ledger: what each client's mutation did, so a retried batch
-- applies once. The gateway runs this file itself when its role may; setup.sql includes it.
create schema if not exists gateway;
create table if not exists gateway.mutations (
    client_id   text        not null,
    mutation_id text        not null,
    result      jsonb       not null,
    txid        bigint      not null,
    applied_at  timestamptz not null default now(),
    primary key (client_id, mutation_id)
);
