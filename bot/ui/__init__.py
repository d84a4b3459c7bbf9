"""The Discord layer: the client, error handling, rendering, delivery, buttons, paging."""
