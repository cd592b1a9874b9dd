-- The active traffic of one model name always sums to 100: checked at commit (deferred), so
-- that a split can be changed across several rows in one transaction.
CREATE OR REPLACE FUNCTION pgfleet_check_traffic_v1() RETURNS trigger
    LANGUAGE plpgsql AS $$
DECLARE
    target text := COALESCE(NEW.name, OLD.name);
    total integer;
    active_count integer;
BEGIN
    SELECT COALESCE(sum(traffic_percent), 0), count(*) INTO total, active_count
    FROM model_versions WHERE name = target AND active;
    IF active_count > 0 AND total <> 100 THEN
        RAISE EXCEPTION 'the traffic of the active versions of % sums to % percent; it must be 100',
            target, total
            USING ERRCODE = 'check_violation',
                  HINT = 'set the whole split at once, e.g. pgfleet ab set NAME v1=80 v2=20';
    END IF;
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS model_versions_traffic_v1 ON model_versions;
CREATE CONSTRAINT TRIGGER model_versions_traffic_v1
    AFTER INSERT OR UPDATE OR DELETE ON model_versions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION pgfleet_check_traffic_v1();
