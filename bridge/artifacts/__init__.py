"""What the bridge keeps of a call: analytics, transcript files, the recording, call.completed."""
