-- Every replica keeps a copy of the rules by scope: each change names the scopes it touched
-- ('c:' customer id, 'p:' plan id, 'a' for all), so a replica reloads only those.
DROP TRIGGER rules_notify ON rules;
DROP FUNCTION notify_rules();

CREATE FUNCTION notify_rule_scopes() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed TEXT[];
    i INT;
BEGIN
    SELECT array_agg(DISTINCT CASE scope_kind WHEN 'customer' THEN 'c:' || scope_id
                                              WHEN 'plan' THEN 'p:' || scope_id
                                              ELSE 'a' END)
      INTO changed FROM changed_rows;
    -- A payload holds at most 8000 bytes: 200 scopes of at most 39 characters each.
    i := 1;
    WHILE i <= coalesce(array_length(changed, 1), 0) LOOP
        PERFORM pg_notify('usage_gate_rules', array_to_string(changed[i:i + 199], ','));
        i := i + 200;
    END LOOP;
    RETURN NULL;
END $$;

CREATE TRIGGER rules_notify_insert AFTER INSERT ON rules
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION notify_rule_scopes();
CREATE TRIGGER rules_notify_update AFTER UPDATE ON rules
    REFERENCING NEW TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION notify_rule_scopes();
CREATE TRIGGER rules_notify_delete AFTER DELETE ON rules
    REFERENCING OLD TABLE AS changed_rows FOR EACH STATEMENT EXECUTE FUNCTION notify_rule_scopes();
