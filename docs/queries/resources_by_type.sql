-- Current resources per type, straight from the change log.
SELECT resource_type, count(*) AS resources
FROM resources_current
GROUP BY resource_type
ORDER BY resources DESC;
