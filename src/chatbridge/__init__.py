"""chatbridge: HiOrg-Server staffing → event-sourced facts → desired chat state → the chat backend."""
