"""Work of the online side: the listing, credentials, HTTP, the mirror folder and its sync."""
