-- The outbox's ledger: one row per (token subject, client id) with the last mutation id
-- applied for it, that batch's transaction id, its first id and the results of its mutations
-- that were not simply applied (any other id of the batch was applied). Mutation ids are integers,
-- strictly increasing per client, so a retried batch applies once (the Replicache / Zero
-- model). Written in the same transaction as the writes. The gateway runs this file itself
-- when its role may; setup.sql includes it.
create schema if not exists gateway;
create table if not exists gateway.clients (
    subject          text        not null,
    client_id        text        not null,
    last_mutation_id bigint      not null default 0,
    last_txid        bigint,
    last_results     jsonb       not null default '[]',
    updated_at       timestamptz not null default now(),
    primary key (subject, client_id)
);
-- Added after the first release of this table; null in rows written before (whose
-- last_results then lists every result of the batch).
alter table gateway.clients add column if not exists last_batch_from bigint;
-- Aborts the statement writing a row outside the caller's scope: a batch of inserts is
-- applied in one statement, with its ledger claim, only when every row is in scope.
create or replace function gateway.assert_in_scope(in_scope boolean) returns boolean
language plpgsql as $$
begin
  if not in_scope then
    raise exception 'a written row is outside the caller''s scope';
  end if;
  return true;
end $$;
-- The first ledger kept a row per mutation under client-chosen text ids, shared by every
-- caller. It cannot vouch for integer ids per subject, so it is no longer read: kept for
-- audit under another name (drop it when you like).
do $$
begin
  if to_regclass('gateway.mutations') is not null and to_regclass('gateway.mutations_v1') is null then
    alter table gateway.mutations rename to mutations_v1;
  end if;
end $$;
