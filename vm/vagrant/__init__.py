"""The Vagrant lab: a local Debian box, libvirt in a lab netns, and VMs meshed by Weft."""
