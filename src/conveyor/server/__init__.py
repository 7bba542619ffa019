"""The dispatch server: agent API, REST API, scheduler and dispatcher over `storage`."""
