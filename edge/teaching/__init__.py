"""What a person taught: the enrollment store, the KNN over it, the teacher and its rules, and why it thinks so.

Imports the model wing and the vocabulary; never devices, the daemon, the link or the apps.
"""
