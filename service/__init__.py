"""logwriter: take log lines over HTTP and append them to files on disk."""
