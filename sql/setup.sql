-- What a DBA runs once so the gateway can work with least privilege. Safe to run again.
--
--   psql "$ADMIN_DATABASE_URL" -v gateway_password="'…'" -f sql/setup.sql
--
-- It creates (when missing): the role `gateway` (LOGIN, REPLICATION), the publication
-- `gateway`, and the gateway's own schema with the outbox's mutation ledger. Then grant the
-- gateway the tables it serves and writes (examples at the end). The gateway also creates
-- the publication, the slot and the ledger itself when its role may.

\if :{?gateway_password}
\else
  \set gateway_password NULL
\endif

do $$
begin
  if not exists (select from pg_roles where rolname = 'gateway') then
    create role gateway login replication;
  else
    alter role gateway login replication;
  end if;
end $$;

select format('alter role gateway password %s', :'gateway_password') as set_password
  where :'gateway_password' is not null and :'gateway_password' <> 'NULL' \gexec

-- Logical replication: one publication the gateway adds tables to (or list them here).
do $$
begin
  if not exists (select from pg_publication where pubname = 'gateway') then
    create publication gateway;
  end if;
end $$;
-- Adding tables to a publication needs ownership of them; either add yours here:
--   alter publication gateway add table public.todos;
-- or let the gateway own them.

-- The gateway's schema: the outbox ledger (per token subject and client, the last mutation
-- applied, so retries apply once). Clients that stopped syncing can be pruned:
--   delete from gateway.clients where updated_at < now() - interval '90 days';
-- (a pruned client that comes back is answered 409 out_of_order with the next id, 1; the
-- SDK then renumbers its pending writes from there).
\ir ledger.sql
alter schema gateway owner to gateway;
alter table gateway.clients owner to gateway;

-- Reading snapshots and the catalog:
grant usage on schema public to gateway;
grant select on all tables in schema public to gateway;
alter default privileges in schema public grant select on tables to gateway;
-- Writes through POST /v1/outbox, for the tables your [[table]] rules make writable, e.g.:
--   grant insert, update, delete on public.todos to gateway;
-- Tables whose filtered shapes must see rows leave the filter need full old rows:
--   alter table public.todos replica identity full;
