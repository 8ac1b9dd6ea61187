-- A reference parameter that restricts another one to a target type
-- (Observation's patient is subject.where(resolve() is Patient)) no longer
-- writes rows for its relative references: the base parameter's rows with
-- that target type are the same references, and searches, includes and
-- $everything read those. This removes the rows written before. Under
-- row-level security a role that is not a superuser sees no rows here, and
-- the rows then stay until their resource is next written, never read.
DELETE FROM idx_reference AS r
    USING (VALUES
    ('Account', 'patient'),
    ('Appointment', 'location'),
    ('Appointment', 'patient'),
    ('Appointment', 'practitioner'),
    ('AppointmentResponse', 'location'),
    ('AppointmentResponse', 'patient'),
    ('AppointmentResponse', 'practitioner'),
    ('Basic', 'patient'),
    ('CarePlan', 'patient'),
    ('CareTeam', 'patient'),
    ('ChargeItem', 'patient'),
    ('ClinicalImpression', 'patient'),
    ('Communication', 'patient'),
    ('CommunicationRequest', 'patient'),
    ('Composition', 'patient'),
    ('Condition', 'patient'),
    ('Contract', 'patient'),
    ('DeviceRequest', 'patient'),
    ('DiagnosticReport', 'patient'),
    ('DocumentManifest', 'patient'),
    ('DocumentReference', 'patient'),
    ('Encounter', 'patient'),
    ('Encounter', 'practitioner'),
    ('Flag', 'patient'),
    ('Goal', 'patient'),
    ('GuidanceResponse', 'patient'),
    ('ImagingStudy', 'patient'),
    ('Invoice', 'patient'),
    ('List', 'patient'),
    ('MeasureReport', 'patient'),
    ('Media', 'patient'),
    ('MedicationAdministration', 'patient'),
    ('MedicationDispense', 'patient'),
    ('MedicationRequest', 'patient'),
    ('MedicationStatement', 'patient'),
    ('Observation', 'patient'),
    ('Person', 'patient'),
    ('Person', 'practitioner'),
    ('Person', 'relatedperson'),
    ('Procedure', 'patient'),
    ('Provenance', 'patient'),
    ('QuestionnaireResponse', 'patient'),
    ('RequestGroup', 'patient'),
    ('RiskAssessment', 'patient'),
    ('ServiceRequest', 'patient'),
    ('Specimen', 'patient'),
    ('Task', 'patient')
    ) AS typed(resource_type, code)
    WHERE r.resource_type = typed.resource_type
    AND r.code = typed.code
    AND r.target_id IS NOT NULL;
