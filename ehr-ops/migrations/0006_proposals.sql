-- Proposals drawn by models from clinical notes: problems, allergies and
-- medications a clinician may accept into the record or reject.
--
-- They live in their own table, apart from resources and resource_versions,
-- so no search, history, change capture or lakehouse table sees them. Only
-- acceptance writes a FHIR resource, through the store, with a Provenance
-- that points at the note.
CREATE TABLE proposals (
    tenant          text COLLATE "C" NOT NULL,
    id              uuid NOT NULL,
    kind            text NOT NULL CHECK (kind IN ('problem', 'allergy', 'medication')),
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'accepted', 'rejected')),
    patient_id      text COLLATE "C" NOT NULL,
    encounter_id    text COLLATE "C",
    note_id         text COLLATE "C" NOT NULL,
    note_version    bigint NOT NULL,
    -- Primary coding: one proposal per concept and note version.
    code_system     text COLLATE "C" NOT NULL,
    code            text COLLATE "C" NOT NULL,
    display         text NOT NULL,
    -- Every coding the matched term names, the primary one first.
    codings         jsonb NOT NULL,
    -- Evidence: [{attachment, start, end, text}] with byte offsets into the
    -- decoded attachment text.
    spans           jsonb NOT NULL,
    -- Context attributes of the mentions (section, temporality, triggers).
    attributes      jsonb NOT NULL,
    model           text NOT NULL,
    model_version   text NOT NULL,
    terminology     text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    created_by      text NOT NULL,
    decided_at      timestamptz,
    decided_by      text,
    reason          text,
    -- The resource an acceptance created, and its Provenance.
    resource_type   text COLLATE "C",
    resource_id     text COLLATE "C",
    provenance_id   text COLLATE "C",
    PRIMARY KEY (tenant, id),
    UNIQUE (tenant, note_id, note_version, kind, code_system, code),
    CHECK ((status = 'pending') = (decided_at IS NULL)),
    CHECK ((status = 'rejected') = (reason IS NOT NULL)),
    CHECK ((status = 'accepted') = (resource_id IS NOT NULL))
);
CREATE INDEX proposals_patient ON proposals (tenant, patient_id, status, created_at);
CREATE INDEX proposals_note ON proposals (tenant, note_id, note_version);

ALTER TABLE proposals ENABLE ROW LEVEL SECURITY;
ALTER TABLE proposals FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON proposals
    USING (tenant = current_setting('infoctor.tenant', true))
    WITH CHECK (tenant = current_setting('infoctor.tenant', true));
