-- The NAS directory (rlm_wificore/directory.py) is kept from these NOTIFYs: a NAS
-- added, changed or removed announces its address; a changed address announces
-- the old and the new one.
CREATE OR REPLACE FUNCTION wificore_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_TABLE_NAME = 'subscribers' THEN
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('wificore_inval', json_build_array('s', OLD.tenant_id, OLD.username)::text);
        END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.username <> OLD.username) THEN
            PERFORM pg_notify('wificore_inval', json_build_array('s', NEW.tenant_id, NEW.username)::text);
        END IF;
    ELSIF TG_TABLE_NAME = 'plans' THEN
        PERFORM pg_notify('wificore_inval', json_build_array('p', OLD.tenant_id, OLD.plan_id)::text);
    ELSIF TG_TABLE_NAME = 'nas' THEN
        IF TG_OP <> 'INSERT' THEN
            PERFORM pg_notify('wificore_inval', json_build_array('n', OLD.tenant_id, host(OLD.ip))::text);
        END IF;
        IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.ip <> OLD.ip) THEN
            PERFORM pg_notify('wificore_inval', json_build_array('n', NEW.tenant_id, host(NEW.ip))::text);
        END IF;
    ELSIF TG_TABLE_NAME = 'tenants' THEN
        PERFORM pg_notify('wificore_inval', json_build_array('t', OLD.tenant_id)::text);
    END IF;
    RETURN NULL;
END $$;

DROP TRIGGER nas_inval ON nas;
CREATE TRIGGER nas_inval AFTER INSERT OR UPDATE OR DELETE ON nas
    FOR EACH ROW EXECUTE FUNCTION wificore_notify();
