-- Who may do what (docs/architecture.md §3). Grants are not part of a schema diff: a migration that changes one
-- says so by hand.

-- Nothing in the private schema is for the API roles (Supabase grants new objects to them by default in some
-- schemas): its tables, sequences and functions are their owner's alone.
revoke all on schema hosting_automator from public;
revoke all on all tables in schema hosting_automator from public, anon, authenticated, service_role;
revoke all on all sequences in schema hosting_automator from public, anon, authenticated, service_role;
revoke all on all functions in schema hosting_automator from public, anon, authenticated, service_role;

-- The functions the worker and operators call: service_role only. Named one by one, with their signatures: the
-- Hub may have functions of its own whose names start with `hosting_`, and their grants are not ours to change.
do $$
declare
  v_fn text;
begin
  foreach v_fn in array array[
    'public.hosting_claim_jobs(text, text, integer, integer, uuid, integer, jsonb, integer, boolean, jsonb)',
    'public.hosting_heartbeat(bigint, uuid, integer, text)',
    'public.hosting_advance(bigint, uuid, integer, jsonb, text, text, text)',
    'public.hosting_exit(bigint, uuid, jsonb)',
    'public.hosting_server_ok(text)',
    'public.hosting_servers()',
    'public.hosting_enqueue(uuid)',
    'public.hosting_retry(uuid, boolean)',
    'public.hosting_remove(uuid)',
    'public.hosting_site_credentials(uuid)',
    'public.hosting_status(integer)',
    'public.hosting_site(text, integer)',
    'public.hosting_due(integer)'
  ] loop
    execute format('revoke all on function %s from public, anon, authenticated', v_fn);
    execute format('grant execute on function %s to service_role', v_fn);
  end loop;
end
$$;
