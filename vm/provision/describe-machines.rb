# Prints, as JSON, the VMs Vagrant itself configured from vm/Vagrantfile: name, hostname, fabric
# IPs, box and libvirt settings. Needs no box, no libvirtd and no network; tests use it to check
# the Vagrantfile against vm/topology.yaml.
#
# usage: ruby vm/provision/describe-machines.rb [VM_DIR]     (default: the directory above this one)
require "json"
require "vagrant"

vm_dir = ARGV.fetch(0, File.expand_path("..", __dir__))
env = Vagrant::Environment.new(cwd: vm_dir, ui_class: Vagrant::UI::Silent)
machines = env.machine_names.map do |name|
  machine = env.machine(name, :libvirt)
  libvirt = machine.provider_config
  {
    name: name.to_s,
    hostname: machine.config.vm.hostname,
    private_networks: machine.config.vm.networks
                             .select { |kind, _| kind == :private_network }
                             .map { |_, options| options.slice(:ip, :netmask, :libvirt__network_name) },
    box: machine.config.vm.box,
    driver: libvirt.driver,
    cpu_mode: libvirt.cpu_mode,
    memory: libvirt.memory,
    cpus: libvirt.cpus,
    synced_folders: machine.config.vm.synced_folders
                           .reject { |_, options| options[:disabled] }.keys,
    triggers_after: machine.config.trigger.after_triggers.map(&:name).uniq,
    provisioners: machine.config.vm.provisioners.map do |p|
      { name: p.name, type: p.type.to_s, args: p.type.to_s == "shell" ? Array(p.config.args) : nil }
    end,
  }
end
puts JSON.pretty_generate(machines)
