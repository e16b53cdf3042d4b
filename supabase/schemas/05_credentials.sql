-- The site user's password (docs/architecture.md §8, §11): the first step of a provisioning job stores the
-- generated password in Vault (one secret per site) before the command that uses it, every retry uses that same
-- password, and the removal deletes it. public.hosting_site_credentials gives it to service_role only.

-- Where each password is kept; never a column in clear.
--   pending: stored before the command that creates the site; confirmed: that command (or a retry with the same
--   password) created it; adopted: the site was there before, made with a password this module never knew;
--   not_stored: this database has no Vault.
create table hosting_automator.credentials (
  site_id uuid primary key,
  state text not null check (state in ('pending', 'confirmed', 'adopted', 'not_stored')),
  -- vault.secrets(id); null unless a secret is stored (pending or confirmed).
  secret_id uuid,
  -- The claim that stored it: a retry under another claim knows the password was sent before.
  lease_token uuid,
  server text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint credentials_secret_iff_kept check ((secret_id is not null) = (state in ('pending', 'confirmed')))
);
comment on table hosting_automator.credentials is
  'Where each site''s site-user password is kept (a Vault secret) and whether it is known to be right.';

-- Vault is present (Supabase projects have it; plain Postgres does not).
create function hosting_automator.vault_present()
returns boolean
language sql
stable
set search_path = ''
as $$
  select to_regclass('vault.secrets') is not null and to_regclass('vault.decrypted_secrets') is not null
$$;

-- Forget a site's stored password: its Vault secret and the record of it.
create function hosting_automator.forget_credentials(p_site uuid)
returns void
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_secret uuid;
begin
  delete from hosting_automator.credentials c where c.site_id = p_site returning c.secret_id into v_secret;
  if v_secret is not null and hosting_automator.vault_present() then
    -- Dynamic SQL: the vault schema may not exist when this function is created.
    execute 'delete from vault.secrets where id = $1' using v_secret;
  end if;
end
$$;

-- The password the site step must use: the one stored by an earlier attempt, else p_candidate, stored now
-- (before the command is sent, so a lost answer cannot lose the password). Answers {password, prior, stored}:
-- prior = an earlier claim stored it (and so may have sent it); stored = false where there is no Vault.
create function hosting_automator.site_password(
  p_site uuid,
  p_lease_token uuid,
  p_candidate text,
  p_domain text,
  p_server text
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cred hosting_automator.credentials;
  v_password text;
  v_secret uuid;
  v_name text := 'hosting_automator_site_' || p_site::text;
begin
  if p_candidate is null or length(p_candidate) not between 16 and 128 then
    raise exception 'the site password candidate must be 16 to 128 characters' using errcode = '22023';
  end if;
  select * into v_cred from hosting_automator.credentials c where c.site_id = p_site for update;
  if not hosting_automator.vault_present() then
    insert into hosting_automator.credentials as c (site_id, state, lease_token, server)
    values (p_site, 'not_stored', p_lease_token, p_server)
    on conflict (site_id) do update set state = 'not_stored', secret_id = null, lease_token = excluded.lease_token,
      server = excluded.server, updated_at = now();
    return jsonb_build_object('password', p_candidate, 'prior', false, 'stored', false);
  end if;
  if v_cred.secret_id is not null then
    execute 'select decrypted_secret from vault.decrypted_secrets where id = $1' into v_password using v_cred.secret_id;
    if v_password is not null then
      return jsonb_build_object('password', v_password,
        'prior', v_cred.lease_token is distinct from p_lease_token, 'stored', true);
    end if;
  end if;
  -- A secret of this name without a record is a leftover of this module's (the name is its own): replace it.
  execute 'delete from vault.secrets where name = $1' using v_name;
  execute 'select vault.create_secret($1, $2, $3)' into v_secret
    using p_candidate, v_name, left('hosting-automator: site user password of ' || coalesce(p_domain, '?'), 300);
  insert into hosting_automator.credentials as c (site_id, state, secret_id, lease_token, server)
  values (p_site, 'pending', v_secret, p_lease_token, p_server)
  on conflict (site_id) do update set state = 'pending', secret_id = excluded.secret_id,
    lease_token = excluded.lease_token, server = excluded.server, updated_at = now();
  return jsonb_build_object('password', p_candidate, 'prior', false, 'stored', true);
end
$$;

-- The site step ended: its result says whether the stored password is the site user's ("credentials": "known",
-- the site was created with it) or not ("unknown": the site was there before; the secret is deleted).
create function hosting_automator.settle_credentials(p_site uuid, p_result jsonb)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_result ->> 'credentials' = 'known' then
    update hosting_automator.credentials c set state = 'confirmed', updated_at = now()
    where c.site_id = p_site and c.state = 'pending';
  elsif p_result ->> 'credentials' = 'unknown' then
    perform hosting_automator.forget_credentials(p_site);
    insert into hosting_automator.credentials (site_id, state) values (p_site, 'adopted')
    on conflict (site_id) do nothing;
  end if;
end
$$;

-- The site user's credentials, for the module that uploads a site's files over SFTP: site user (kept by the step
-- that made the site), password, server and doc root. Raises a clear error when there is nothing to give: no such
-- site, not provisioned yet, being removed, no Vault, or adopted from an earlier run (its password was never
-- known here).
create function public.hosting_site_credentials(p_site_id uuid)
returns jsonb
language plpgsql
stable
security definer
set search_path = ''
as $$
declare
  v_site record;
  v_cred hosting_automator.credentials;
  v_facts jsonb;
  v_password text;
  v_host text;
  v_port integer;
begin
  select s.id, s.domain, s.status_hosting, s.hosting_doc_root into v_site from public.sites s where s.id = p_site_id;
  if not found then
    raise exception 'no site with id %', p_site_id using errcode = 'P0002';
  end if;
  if hosting_automator.row_in_removal(v_site.status_hosting) or exists (
    select 1 from hosting_automator.jobs r
    where r.site_id = p_site_id and r.kind = 'remove' and r.state in ('queued', 'running'))
  then
    raise exception 'site % (%) is removed or being removed: its credentials are deleted', p_site_id, v_site.domain
      using errcode = 'P0002';
  end if;
  select f.facts into v_facts from hosting_automator.site_facts f where f.site_id = p_site_id;
  select * into v_cred from hosting_automator.credentials c where c.site_id = p_site_id;
  if v_facts ->> 'site_user' is null then
    raise exception 'site % (%) has no CloudPanel site yet: its credentials exist once the site step is done',
      p_site_id, v_site.domain using errcode = 'P0002';
  end if;
  if v_cred.state is null then
    raise exception 'site % (%) was provisioned before hosting-automator kept credentials: its password is not stored; set a new one in CloudPanel',
      p_site_id, v_site.domain using errcode = 'P0002';
  elsif v_cred.state = 'not_stored' then
    raise exception 'site %: the password was not stored because this database has no Vault (supabase_vault)', p_site_id
      using errcode = '55000', hint = 'Supabase projects have Vault; on plain Postgres the password is not kept.';
  elsif v_cred.state = 'adopted' then
    raise exception 'site % (%) was adopted from an earlier run: its site already existed on CloudPanel, so its password was never known to hosting-automator; set a new one in CloudPanel',
      p_site_id, v_site.domain using errcode = 'P0002';
  end if;
  if hosting_automator.vault_present() then
    execute 'select decrypted_secret from vault.decrypted_secrets where id = $1' into v_password using v_cred.secret_id;
  end if;
  if v_password is null then
    raise exception 'site % (%): its password secret is missing from Vault (deleted by hand?)', p_site_id, v_site.domain
      using errcode = 'P0002';
  end if;
  -- The server by its name; before the fleet a server was recorded as host:port.
  select sv.host, sv.port into v_host, v_port from hosting_automator.servers sv where sv.name = v_cred.server;
  if not found then
    v_host := coalesce(substring(v_cred.server from '^(.*):[0-9]+$'), v_cred.server);
    v_port := substring(v_cred.server from ':([0-9]+)$')::integer;
  end if;
  return jsonb_build_object(
    'site_id', v_site.id,
    'domain', v_site.domain,
    'site_user', v_facts ->> 'site_user',
    'password', v_password,
    'server', v_cred.server,
    'host', v_host,
    'port', v_port,
    'doc_root', coalesce(v_site.hosting_doc_root, v_facts ->> 'doc_root'));
end
$$;
