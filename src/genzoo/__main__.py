from genzoo.cli import entry

entry()
