-- The demo schema used by `gateway demo`: a small multi-tenant todo list.
create table orgs (
  id text primary key,
  name text not null
);

create table todos (
  id uuid primary key default gen_random_uuid(),
  org_id text not null references orgs (id),
  title text not null,
  done boolean not null default false,
  version int4 not null default 1,
  updated_at timestamptz not null default now()
);

insert into orgs values ('acme', 'Acme Corp'), ('globex', 'Globex');

insert into todos (org_id, title, done) values
  ('acme', 'Ship the sync gateway', false),
  ('acme', 'Write the release notes', false),
  ('acme', 'Celebrate', true),
  ('globex', 'Plan the migration', false),
  ('globex', 'Review the budget', true);
