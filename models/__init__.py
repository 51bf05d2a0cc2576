"""swarmlm.models"""
